"""A newcomer's first hour, point 3: the launcher's last line is the script's error whatever
accelerate / torch prints, extraction checks the tokenizer weights before creating anything, and
the resume check's free keys stay in step with the schemas' compat lists."""
import io
import os
import stat
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY_CONFIG

ERROR = "error: override 'train.bogus=1': unknown config key 'train.bogus'"


def test_the_real_launcher_ends_with_the_script_error(tmp_path):
    """Against the installed accelerate (1.16 chains a RuntimeError repeating the script's stderr to
    its CalledProcessError traceback), not a recorded transcript."""
    proc = subprocess.run(["bash", str(REPO / "run_train.sh"), TINY_CONFIG, "train.bogus=1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TMPDIR=str(tmp_path), MASTER_PORT=str(29500 + os.getpid() % 1000)))
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1] == ERROR and lines.count(ERROR) == 1
    assert "The above exception" not in proc.stderr and "Traceback" not in proc.stderr


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def filter_module():
    import importlib

    return importlib.import_module("tools.launch_errors")


def filtered(chunks, clock=None):
    """Feed (seconds, text) chunks to the launcher filter; (shown, log, status)."""
    module = filter_module()
    clock = clock or Clock()
    out, log = io.StringIO(), io.StringIO()
    log.close = lambda: None
    filt = module.Filter(log, out, clock)
    for at, text in chunks:
        clock.now = at
        for line in text.splitlines(keepends=True):
            filt.line(line)
    return out.getvalue(), log.getvalue(), filt.close()


def test_an_unknown_launcher_report_after_the_error_is_kept_out_of_sight():
    report = ("LauncherError: the training script failed\n\n  (a future launcher's own words)\n"
              "exit status 5\nreturned non-zero exit status 5.\n")
    shown, log, status = filtered([(0, "step 1\n" + ERROR + "\n"), (0.5, report)])
    assert shown == "step 1\n" + ERROR + "\n" and report in log and status == 5


def test_the_chained_report_of_accelerate_1_16_is_kept_out_of_sight():
    report = (f"RuntimeError: {ERROR}\n\n\nThe above exception was the direct cause of the following exception:\n\n"
              "Traceback (most recent call last):\n  File \"/venv/bin/accelerate\", line 6, in <module>\n"
              "    sys.exit(main())\nsubprocess.CalledProcessError: Command '['python', 'train.py']' returned "
              "non-zero exit status 1.\n")
    shown, log, status = filtered([(0, ERROR + "\n"), (0.2, report)])
    assert shown == ERROR + "\n" and status == 1 and "direct cause" in log


def test_held_text_goes_to_a_file_for_the_launcher_to_show_after_a_success(tmp_path):
    """launch.sh shows the held text only when accelerate exits 0: the filter cannot know."""
    report = "SomeLauncher: the script failed (no status in any known format)\n"
    held, log = tmp_path / "held", tmp_path / "log"
    proc = subprocess.run([sys.executable, str(REPO / "tools/launch_errors.py"), str(log), str(held)],
                          input=(ERROR + "\n" + report).encode(), capture_output=True)
    assert proc.stderr.decode() == ERROR + "\n" and held.read_text() == report and proc.returncode == 0
    assert stat.S_IMODE(held.stat().st_mode) == 0o600


def test_output_long_after_an_error_line_is_the_scripts_own():
    later = filter_module().HOLD_SECONDS + 1
    shown, _, status = filtered([(0, ERROR + "\n"), (1, "held line\n"), (later, "[log] still training\n")])
    assert shown == ERROR + "\nheld line\n[log] still training\n" and status == 0


def tiny_tokenizer_yaml(tmp_path, ckpt):
    text = (REPO / "configs/tiny/tiny_vavae_f4d4.yaml").read_text().replace("ckpt_path: null", f"ckpt_path: {ckpt}")
    path = tmp_path / "tok.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def images(tmp_path):
    from PIL import Image

    root = tmp_path / "images" / "class0"
    root.mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(root / "a.png")
    return tmp_path / "images"


def test_extraction_checks_the_tokenizer_weights_before_creating_its_folder(tmp_path, images):
    import extract_features

    out = tmp_path / "latents"
    tok = tiny_tokenizer_yaml(tmp_path, tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="tokenizer weights not found: .*missing.pt"):
        extract_features.main(["--data-path", str(images), "--output-path", str(out), "--tokenizer-config", str(tok),
                               "--image-size", "16"])
    assert not out.exists()


def test_extraction_refuses_pickled_tokenizer_weights_before_creating_its_folder(tmp_path, images):
    import extract_features

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'PWNED')!r}, 'w').close()",))

    torch.save({"state_dict": {}, "x": Evil()}, tmp_path / "evil.pt")
    out = tmp_path / "latents"
    tok = tiny_tokenizer_yaml(tmp_path, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="LIGHTNINGDIT_TRUSTED_PICKLES"):
        extract_features.main(["--data-path", str(images), "--output-path", str(out), "--tokenizer-config", str(tok),
                               "--image-size", "16"])
    assert not out.exists() and not (tmp_path / "PWNED").exists()


def test_free_keys_follow_the_compat_lists():
    from configs.schema import COMPAT_KEYS
    from tokenizer.train_config import COMPAT_KEYS as TOKENIZER_COMPAT_KEYS
    from training.rundir import DIT_FREE_KEYS, TOKENIZER_FREE_KEYS, config_differences

    assert set(COMPAT_KEYS) <= set(DIT_FREE_KEYS)
    checked = {"model.params.lossconfig.params.pixelloss_weight"}
    assert set(TOKENIZER_COMPAT_KEYS) - checked <= set(TOKENIZER_FREE_KEYS)
    assert not checked & set(TOKENIZER_FREE_KEYS)
    # a compat key that changes is not a difference, a run-changing one is
    stored = {"train": {"ckpt": None, "max_steps": 5}, "optimizer": {"lr": 1.0}}
    current = {"train": {"ckpt": "x.pt", "max_steps": 9}, "optimizer": {"lr": 2.0}}
    assert config_differences(stored, current, DIT_FREE_KEYS) == [("optimizer.lr", 1.0, 2.0)]
