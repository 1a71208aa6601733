"""Bad-input audit: run the entry scripts on ~100 wrong inputs and faults, one temp dir per case,
and write the table (command, last line, exit status, verdict) to docs/reliability.md.

    python tools/reliability_audit.py [--out docs/reliability.md] [--only SUBSTRING] [--readme TSV]

A case passes when its exit status is the expected one (non-zero for a bad input), its last output
line names the culprit (the file, key or flag), an earlier run's output (`out/`, a finished tiny
training run) is byte-identical afterwards, the files it must not create do not exist, and the
secret in $AUDIT_SECRET is written nowhere. Every command runs without a shell (argument lists). CPU only, no weights: tiny configs, synthetic
latents, random-init tokenizer / Inception. `--readme TSV` adds rows for the README commands run
separately (label, command, status, seconds, last line; they take minutes each).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

REPO = Path(__file__).resolve().parents[1]
CFG = str(REPO / "configs/tiny/lightningdit_tiny.yaml")
TOK = str(REPO / "configs/tiny/tiny_vavae_f4d4.yaml")
TOK_TRAIN = str(REPO / "configs/tokenizer/tiny_cpu.yaml")
PY = sys.executable
# Commands are argument lists, run without a shell: no path is ever parsed by one.
TRAIN = [PY, f"{REPO}/train.py", CFG, "data.data_path=lat", "train.output_dir=out"]
INFER = [PY, f"{REPO}/inference.py", CFG, "data.data_path=lat", "train.output_dir=out", f"vae.config_path={TOK}",
         "--vae-random-init", "sample.fid_num=4", "sample.num_sampling_steps=2", "sample.per_proc_batch_size=4"]
CKPT4 = "out/lightningdit_tiny/checkpoints/0000004.pt"
CKPT2 = "out/lightningdit_tiny/checkpoints/0000002.pt"
TOKTRAIN = [PY, f"{REPO}/train_tokenizer.py", TOK_TRAIN, "train.output_dir=tokout",
            "data.params.train.data_root=images", "data.params.validation.data_root=images"]
EVAL = [PY, f"{REPO}/tools/adm_evaluator.py"]
EXTRACT = [PY, f"{REPO}/extract_features.py"]
SHARD = "lat/latents_rank00_shard000.safetensors"
SECRET = "audit-secret-7f3a9c"          # the value of $AUDIT_SECRET in every case
# A pickle that creates PWNED when loaded with weights_only=False (it must never be).
EVIL_PICKLE = ("import builtins, sys, torch\n"
               "class Evil:\n"
               "    def __reduce__(self):\n"
               "        return (builtins.exec, (\"open('PWNED', 'w').close()\",))\n"
               "torch.save({'state_dict': {}, 'ema': {}, 'hook': Evil()}, sys.argv[1])\n")


@dataclass
class Case:
    area: str
    name: str
    cmd: Sequence[str]                          # argv (no shell)
    culprit: Union[str, Sequence[str]] = ()     # the last line must contain one of these
    expect: str = "fail"                        # fail | ok | help | recover
    setup: Sequence[Callable[[Path], None]] = ()  # run first, in the case's directory (not shown)
    protect: bool = True                        # out/ (an earlier run) must stay byte-identical
    env: Dict[str, str] = field(default_factory=dict)
    absent: Sequence[str] = ()                  # paths that must not exist afterwards (side effects)


def _snapshot(root: Path) -> Dict[str, object]:
    """Relative path -> sha256 (files), '<dir>', or the bytes of a log (`*.txt`, `*.jsonl`: may grow)."""
    if not root.exists():
        return {}
    out: Dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        if p.name.endswith(".lock"):
            continue
        key = str(p.relative_to(root))
        out[key] = "<dir>" if p.is_dir() else (p.read_bytes() if p.suffix in (".txt", ".jsonl") else
                                                hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _unchanged(before: Dict[str, object], after: Dict[str, object]) -> bool:
    """Every earlier file is still there with the same bytes (logs: the same bytes, maybe appended to)."""
    for key, old in before.items():
        new = after.get(key)
        if isinstance(old, bytes):
            if not (isinstance(new, bytes) and new.startswith(old)):
                return False
        elif new != old:
            return False
    return True


# ---- setup steps (each takes the case's directory) ------------------------------------------------

def write(rel: str, text: str) -> Callable[[Path], None]:
    return lambda work: (work / rel).write_text(text)


def remove(pattern: str) -> Callable[[Path], None]:
    return lambda work: [p.unlink() for p in work.glob(pattern)]


def copy(src: str, dst: str) -> Callable[[Path], None]:
    return lambda work: shutil.copyfile(work / src, work / dst)


def truncate(src: str, dst: str, size: int) -> Callable[[Path], None]:
    return lambda work: (work / dst).write_bytes((work / src).read_bytes()[:size])


def mkdir(rel: str) -> Callable[[Path], None]:
    return lambda work: (work / rel).mkdir(parents=True, exist_ok=True)


def symlink(rel: str, target: str) -> Callable[[Path], None]:
    return lambda work: (work / rel).symlink_to(work / target)


def run(*argv: str) -> Callable[[Path], None]:
    """Run a command (argv, no shell) in the case's directory; its result is not checked."""
    return lambda work: subprocess.run(list(argv), cwd=work, env=_env(work), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, timeout=600)


def python(code: str, *args: str) -> Callable[[Path], None]:
    """`python -c code args...`: paths are passed as arguments, never pasted into the code."""
    return run(PY, "-c", code, *args)


REWRITE_SHARD = ("import sys; from safetensors.torch import load_file, save_file; t = load_file(sys.argv[1]); "
                 "exec(sys.argv[2]); save_file({k: v.contiguous() for k, v in t.items()}, sys.argv[1])")
STATS = "import sys, torch; o = torch.ones(1, 4, 1, 1); torch.save(eval(sys.argv[1]), 'lat/latents_stats.pt')"
# 4 bytes of storage viewed with zero strides as (1, 500M, 1, 1): 2 GB once anything touches it.
HUGE_STATS = ("import torch; s = torch.ones(1); big = s.as_strided((1, 500_000_000, 1, 1), (0, 0, 0, 0)); "
              "torch.save({'mean': big, 'std': big}, 'lat/latents_stats.pt')")
# An .npz whose arr_0 header declares 10^9 images of 256 x 256 x 3 but holds 64 bytes of data.
HUGE_NPZ = ("import sys, zipfile, numpy as np; h = {'descr': '|u1', 'fortran_order': False, "
            "'shape': (10**9, 256, 256, 3)}; import io; b = io.BytesIO(); "
            "np.lib.format.write_array_header_1_0(b, h); z = zipfile.ZipFile(sys.argv[1], 'w'); "
            "z.writestr('arr_0.npy', b.getvalue() + bytes(64)); z.close()")
LOCK = ("import json, os, socket, sys; json.dump({'pid': int(sys.argv[1]), 'host': socket.gethostname(), "
        "'started': 0}, open('out/lightningdit_tiny/.run.lock', 'w'))")


def _env(work: Path) -> Dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(work) + ".tmp", AUDIT_SECRET=SECRET)


def cases() -> List[Case]:
    c: List[Case] = []
    add = c.append
    # --- config -------------------------------------------------------------------------------
    for script in ("train.py", "inference.py", "train_tokenizer.py"):
        add(Case("config", f"{script}: no config", [PY, f"{REPO}/{script}"], "no config file given"))
        add(Case("config", f"{script}: empty YAML", [PY, f"{REPO}/{script}", "empty.yaml"], "empty.yaml: empty config",
                 setup=[write("empty.yaml", "")]))
    add(Case("config", "YAML is a list", [PY, f"{REPO}/train.py", "list.yaml"], "list.yaml: expected a YAML mapping",
             setup=[write("list.yaml", "- a\n- b\n")]))
    add(Case("config", "YAML syntax error", [PY, f"{REPO}/train.py", "bad.yaml"], "bad.yaml: not valid YAML",
             setup=[write("bad.yaml", "train: [1, 2\n")]))
    add(Case("config", "directory as config", [PY, f"{REPO}/train.py", "lat"], "lat: is a directory"))
    add(Case("config", "missing config file", [PY, f"{REPO}/train.py", "nope.yaml"], "config file not found: nope.yaml"))
    add(Case("config", "unknown key in YAML", [PY, f"{REPO}/train.py", "typo.yaml"],
             "typo.yaml: unknown config key 'train.max_stepz'", setup=[write("typo.yaml", "train:\n  max_stepz: 3\n")]))
    add(Case("config", "wrong type in YAML", [PY, f"{REPO}/train.py", "typed.yaml"],
             "typed.yaml: bad value for 'train.max_steps'", setup=[write("typed.yaml", "train:\n  max_steps: many\n")]))
    add(Case("config", "range error in YAML", [PY, f"{REPO}/train.py", "range.yaml"],
             "range.yaml: bad value for 'optimizer.lr'", setup=[write("range.yaml", "optimizer:\n  lr: -1\n")]))
    add(Case("config", "unknown key override", TRAIN + ["data.nope=1"], "override 'data.nope=1'"))
    add(Case("config", "override without =", TRAIN + ["train.max_steps"], "train.max_steps"))
    add(Case("config", "override before config", [PY, f"{REPO}/train.py", "train.max_steps=3", CFG],
             "expected a config file before overrides"))
    add(Case("config", "unknown flag", TRAIN + ["--bogus"], "--bogus"))
    for override in ("train.max_steps=-1", "train.global_batch_size=0", "train.ckpt_every=0", "train.ema_decay=2",
                     "optimizer.lr=0", "optimizer.beta2=1", "data.num_classes=0", "model.class_dropout_prob=1.5",
                     "sample.num_sampling_steps=0", "sample.cfg_interval_start=2", "sample.timestep_shift=nan",
                     "sample.cfg_channels=some", "transport.path_type=Cosine", "train.max_steps=ten"):
        add(Case("config", f"override {override}", TRAIN + [override], f"override '{override}'"))
    add(Case("config", "image_size not divisible", TRAIN + ["data.image_size=18"], "data.image_size 18"))
    # --- data -----------------------------------------------------------------------------------
    add(Case("data", "data_path missing", TRAIN + ["data.data_path=nowhere"], "nowhere"))
    add(Case("data", "no shards", TRAIN, "no *.safetensors latent shards", setup=[remove("lat/*.safetensors")]))
    add(Case("data", "shard is a text file", TRAIN, "latents_rank00_shard000.safetensors: unreadable",
             setup=[write(SHARD, "text\n")]))
    add(Case("data", "shard missing labels", TRAIN, "missing key(s) ['labels']",
             setup=[python(REWRITE_SHARD, SHARD, "del t['labels']")]))
    add(Case("data", "shard float64 latents", TRAIN, "latents_rank00_shard000.safetensors: dtypes",
             setup=[python(REWRITE_SHARD, SHARD, "t['latents']=t['latents'].double()")]))
    add(Case("data", "labels >= num_classes", TRAIN, "outside [0, 10)",
             setup=[python(REWRITE_SHARD, SHARD, "t['labels']=t['labels']*0+12")]))
    add(Case("data", "negative labels", TRAIN, "outside [0, 10)",
             setup=[python(REWRITE_SHARD, SHARD, "t['labels']=t['labels']*0-1")]))
    add(Case("data", "empty shards", TRAIN, "hold no latents",
             setup=[python(REWRITE_SHARD, s, "t={k: v[:0] for k, v in t.items()}")
                    for s in ("lat/latents_rank00_shard000.safetensors", "lat/latents_rank00_shard001.safetensors")]))
    add(Case("data", "latents vs model.in_chans", TRAIN + ["model.in_chans=8"], "does not match the model's (8, 4, 4)"))
    add(Case("data", "latents vs latent grid", TRAIN + ["data.image_size=32"], "does not match the model's (4, 8, 8)"))
    add(Case("data", "fewer latents than a batch", TRAIN + ["train.global_batch_size=128"], "fewer than one global batch"))
    add(Case("data", "stats missing", TRAIN, "latents_stats.pt", setup=[remove("lat/latents_stats.pt")]))
    add(Case("data", "stats text file", TRAIN, "not a PyTorch stats file", setup=[write("lat/latents_stats.pt", "hi\n")]))
    add(Case("data", "stats NaN", TRAIN, "NaN or inf", setup=[python(STATS, "{'mean': o*float('nan'), 'std': o}")]))
    add(Case("data", "stats zero std", TRAIN, "std must be positive", setup=[python(STATS, "{'mean': o, 'std': o*0}")]))
    add(Case("data", "stats wrong shape", TRAIN, "expected (1, C, 1, 1)",
             setup=[python(STATS, "{'mean': o[0,:,0,0], 'std': o[0,:,0,0]}")]))
    add(Case("data", "stats without std", TRAIN, "expected a dict with 'mean' and 'std'", setup=[python(STATS, "{'mean': o}")]))
    add(Case("data", "stats channels", TRAIN, "3 channels", setup=[python(STATS, "{'mean': o[:,:3], 'std': o[:,:3]}")]))
    add(Case("data", "valid_path missing", TRAIN + ["data.valid_path=nowhere", "train.valid_every=2"], "nowhere"))
    # --- checkpoints -------------------------------------------------------------------------------
    add(Case("checkpoint", "inference: ckpt_path unset", INFER, "ckpt_path is not set"))
    add(Case("checkpoint", "inference: ckpt missing", INFER + ["ckpt_path=missing.pt"], "missing.pt"))
    add(Case("checkpoint", "inference: text file as ckpt", INFER + ["ckpt_path=notes.pt"], "not a PyTorch checkpoint: notes.pt",
             setup=[write("notes.pt", "hello\n")]))
    add(Case("checkpoint", "inference: random bytes as ckpt", INFER + ["ckpt_path=rand.pt"], "rand.pt",
             setup=[lambda work: (work / "rand.pt").write_bytes(os.urandom(4096))]))
    add(Case("checkpoint", "inference: truncated ckpt", INFER + ["ckpt_path=trunc.pt"], "trunc.pt",
             setup=[truncate(CKPT4, "trunc.pt", 2000)]))
    add(Case("checkpoint", "inference: stats file as ckpt", INFER + ["ckpt_path=lat/latents_stats.pt"], "latents_stats.pt"))
    add(Case("checkpoint", "inference: ckpt of another model size", INFER + [f"ckpt_path={CKPT4}", "model.hidden_size=32"],
             ("0000004.pt", "hidden_size", "shape")))
    add(Case("checkpoint", "train: weight_init missing", TRAIN + ["train.weight_init=nope.pt"], "nope.pt"))
    add(Case("checkpoint", "train: weight_init text", TRAIN + ["train.weight_init=notes.pt"], "not a PyTorch checkpoint: notes.pt",
             setup=[write("notes.pt", "hello\n")]))
    add(Case("checkpoint", "inference: tokenizer config missing", INFER + [f"ckpt_path={CKPT4}", "vae.config_path=tok.yaml"],
             "tok.yaml"))
    add(Case("checkpoint", "inference: stats missing", INFER + [f"ckpt_path={CKPT4}", "data.data_path=nowhere"],
             "nowhere/latents_stats.pt"))
    # --- runs -----------------------------------------------------------------------------------------
    add(Case("runs", "re-run into an existing experiment", TRAIN + ["train.max_steps=4"],
             ("lightningdit_tiny", "train.resume", "overwrite")))
    add(Case("runs", "resume with a changed lr", TRAIN + ["train.max_steps=6", "train.resume=true", "optimizer.lr=0.5"],
             "optimizer.lr"))
    add(Case("runs", "resume, corrupt newest checkpoint", TRAIN + ["train.max_steps=4", "train.resume=true"],
             "0000004.pt", expect="recover", setup=[truncate(CKPT4, CKPT4, 1000)], protect=False))
    add(Case("runs", "second run while locked", TRAIN + ["train.max_steps=6", "train.resume=true"], ("lock", "in use"),
             setup=[python(LOCK, str(os.getpid()))]))
    add(Case("runs", "resume without exp_name", TRAIN + ["train.exp_name=null", "train.resume=true"], "train.exp_name"))
    add(Case("runs", "sampling resumed with a replaced checkpoint", INFER + ["ckpt_path=model.pt"], ("model.pt", "checkpoint"),
             setup=[copy(CKPT4, "model.pt"), run(*INFER, "ckpt_path=model.pt"), copy(CKPT2, "model.pt")], protect=False))
    # --- evaluation ------------------------------------------------------------------------------------
    for name, args, culprit in (
            ("evaluator: sample file missing", ["ref32.npz", "missing.npz"], "missing.npz"),
            ("evaluator: reference missing", ["missing.npz", "s32.npz"], "missing.npz"),
            ("evaluator: 32 px ref vs 64 px samples", ["ref32.npz", "s64.npz"], ("64", "size")),
            ("evaluator: float samples", ["ref32.npz", "sfloat.npz"], ("uint8", "sfloat.npz")),
            ("evaluator: npz without arr_0", ["ref32.npz", "snokey.npz"], ("arr_0", "snokey.npz")),
            ("evaluator: too few images", ["ref32.npz", "sfew.npz"], ("sfew.npz", "images"))):
        add(Case("evaluation", name, EVAL + args + ["--random-init", "--device", "cpu"], culprit))
    add(Case("evaluation", "evaluator: text file as npz", EVAL + ["ref32.npz", "notes.npz", "--random-init", "--device", "cpu"],
             "notes.npz", setup=[write("notes.npz", "hello\n")]))
    add(Case("evaluation", "evaluator: text Inception weights",
             EVAL + ["ref32.npz", "s32.npz", "--inception-weights", "notes.pt", "--device", "cpu"], "notes.pt",
             setup=[write("notes.pt", "hello\n")]))
    add(Case("evaluation", "evaluator: weights missing",
             EVAL + ["ref32.npz", "s32.npz", "--inception-weights", "nope.pth", "--device", "cpu"], "nope.pth"))
    add(Case("evaluation", "run_fid_eval.sh with one argument", ["bash", f"{REPO}/run_fid_eval.sh", "ref32.npz"], "usage"))
    add(Case("evaluation", "save_npz: missing folder", [PY, f"{REPO}/tools/save_npz.py", "nowhere"], "nowhere"))
    add(Case("evaluation", "save_npz: empty folder", [PY, f"{REPO}/tools/save_npz.py", "emptydir"], "emptydir",
             setup=[mkdir("emptydir")]))
    add(Case("evaluation", "make_reference_batch: missing folder",
             [PY, f"{REPO}/tools/make_reference_batch.py", "nowhere", "ref.npz", "--random-init", "--device", "cpu"], "nowhere"))
    add(Case("evaluation", "tokenizer eval: data path missing",
             [PY, f"{REPO}/tools/evaluate_tokenizer.py", "--config", TOK, "--data-path", "nowhere", "--random-init",
              "--skip-fid", "--skip-lpips"], "nowhere"))
    add(Case("evaluation", "tokenizer eval: config missing",
             [PY, f"{REPO}/tools/evaluate_tokenizer.py", "--config", "tok.yaml", "--data-path", "images", "--random-init",
              "--skip-fid", "--skip-lpips"], "tok.yaml"))
    # --- tokenizer / extraction ---------------------------------------------------------------------
    for override, key in (("data.params.batch_size=0", "data.params.batch_size"), ("train.max_steps=-3", "train.max_steps"),
                          ("lightning.trainer.precision=16", "lightning.trainer.precision"),
                          ("model.params.lossconfig.params.disc_start=null", "disc_start"),
                          ("model.params.use_vf=siglip", "use_vf")):
        add(Case("tokenizer", f"train_tokenizer {override}", TOKTRAIN + [override], key))
    add(Case("tokenizer", "train_tokenizer: data root missing",
             TOKTRAIN + ["data.params.train.data_root=nowhere", "train.max_steps=2"], "nowhere"))
    add(Case("tokenizer", "train_tokenizer: init_weight text", TOKTRAIN + ["init_weight=notes.pt", "train.max_steps=2"],
             "notes.pt", setup=[write("notes.pt", "hello\n")]))
    add(Case("tokenizer", "extraction: data path missing",
             EXTRACT + ["--data-path", "nowhere", "--output-path", "ext", "--tokenizer-config", TOK,
                        "--random-init-tokenizer", "--image-size", "16"], "nowhere"))
    add(Case("tokenizer", "extraction: tokenizer config missing",
             EXTRACT + ["--data-path", "images", "--output-path", "ext", "--tokenizer-config", "tok.yaml", "--image-size", "32"],
             "tok.yaml"))
    add(Case("tokenizer", "extraction: tokenizer weights missing (nothing created)",
             EXTRACT + ["--data-path", "images", "--output-path", "ext", "--tokenizer-config", "tok.yaml", "--image-size", "16"],
             "nope.pt", setup=[write("tok.yaml", open(TOK).read().replace("ckpt_path: null", "ckpt_path: nope.pt"))], absent=["ext"]))
    add(Case("tokenizer", "extraction: stats-only on an empty dir", EXTRACT + ["--output-path", "emptydir", "--stats-only"],
             "emptydir", setup=[mkdir("emptydir")]))
    add(Case("tokenizer", "latent_vis: input missing", [PY, f"{REPO}/tools/latent_vis.py", "nowhere", "--out-dir", "vis"],
             "nowhere"))
    # --- security: files from the internet, shared machines (docs/reliability.md, Security) ------------
    add(Case("security", "YAML reads an environment variable", [PY, f"{REPO}/train.py", "env.yaml"],
             ("env.yaml", "oc.env"), setup=[write("env.yaml", "train:\n  exp_name: ${oc.env:AUDIT_SECRET}\n")]))
    add(Case("security", "override reads an environment variable", TRAIN + ["train.exp_name=${oc.env:AUDIT_SECRET}"],
             "resolver interpolations"))
    add(Case("security", "YAML interpolations doubling 20 times", [PY, f"{REPO}/train.py", "bomb.yaml"],
             ("bomb.yaml", "characters"),
             setup=[write("bomb.yaml", "train:\n  exp_name: ${v.a20}\nv:\n  a0: xxxxxxxx\n"
                          + "".join(f"  a{i}: ${{v.a{i - 1}}}${{v.a{i - 1}}}\n" for i in range(1, 21)))]))
    add(Case("security", "YAML aliases doubling", [PY, f"{REPO}/train.py", "alias.yaml"], ("alias.yaml", "aliases"),
             setup=[write("alias.yaml", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
                 f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 7)))]))
    add(Case("security", "exp_name leaves output_dir", TRAIN + ["train.exp_name=../escaped"], "train.exp_name",
             absent=["escaped"]))
    add(Case("security", "tokenizer exp_name is absolute", TOKTRAIN + ["train.exp_name=/tmp/escaped"], "train.exp_name"))
    add(Case("security", "data.num_workers above its bound", TRAIN + ["data.num_workers=100000"], "data.num_workers"))
    add(Case("security", "sample.fid_num above its bound", INFER + ["sample.fid_num=1000000000000"], "sample.fid_num"))
    add(Case("security", "foundation model_kwargs checkpoint_path",
             TOKTRAIN + ["model.params.foundation.model_kwargs={checkpoint_path: /etc/passwd}"], "checkpoint_path"))
    add(Case("security", "inference: pickled code in ckpt_path", INFER + ["ckpt_path=evil.pt"],
             "LIGHTNINGDIT_TRUSTED_PICKLES", setup=[python(EVIL_PICKLE, "evil.pt")], absent=["PWNED"]))
    add(Case("security", "train: pickled code in weight_init", TRAIN + ["train.weight_init=evil.pt"],
             "LIGHTNINGDIT_TRUSTED_PICKLES", setup=[python(EVIL_PICKLE, "evil.pt")], absent=["PWNED"]))
    add(Case("security", "tokenizer eval: pickled code in --ckpt-path",
             [PY, f"{REPO}/tools/evaluate_tokenizer.py", "--config", TOK, "--ckpt-path", "evil.pt", "--data-path", "images",
              "--skip-fid", "--skip-lpips", "--output", "tokeval.json"],
             "LIGHTNINGDIT_TRUSTED_PICKLES", setup=[python(EVIL_PICKLE, "evil.pt")], absent=["PWNED", "tokeval.json"]))
    add(Case("security", "extraction: pickled code in the tokenizer's ckpt_path",
             EXTRACT + ["--data-path", "images", "--output-path", "ext", "--tokenizer-config", "tok.yaml", "--image-size", "16"],
             "LIGHTNINGDIT_TRUSTED_PICKLES",
             setup=[python(EVIL_PICKLE, "evil.pt"), write("tok.yaml", open(TOK).read().replace("ckpt_path: null", "ckpt_path: evil.pt"))],
             absent=["PWNED", "ext"]))
    add(Case("security", "stats declaring a 2 GB tensor in 1 KB", TRAIN, "latents_stats.pt", setup=[python(HUGE_STATS)]))
    add(Case("security", "npz declaring 10^9 images in 1 KB", EVAL + ["ref32.npz", "huge.npz", "--random-init", "--device", "cpu"],
             "huge.npz", setup=[python(HUGE_NPZ, "huge.npz")]))
    add(Case("security", "symlink planted at log.txt", TRAIN + ["train.output_dir=out2", "train.max_steps=1"], "log.txt",
             setup=[mkdir("out2/lightningdit_tiny"), write("victim.txt", "victim\n"),
                    symlink("out2/lightningdit_tiny/log.txt", "victim.txt")]))
    add(Case("security", "launcher: WORLD_SIZE runs a command", ["bash", f"{REPO}/run_train.sh", CFG, "data.data_path=lat"],
             "WORLD_SIZE", env={"WORLD_SIZE": "a[$(touch PWNED)]"}, absent=["PWNED"]))
    add(Case("security", "launcher: GPUS_PER_NODE runs a command", ["bash", f"{REPO}/run_train.sh", CFG, "data.data_path=lat"],
             "GPUS_PER_NODE", env={"GPUS_PER_NODE": "x[$(touch PWNED)]"}, absent=["PWNED"]))
    # --- launchers ---------------------------------------------------------------------------------
    add(Case("launcher", "run_train.sh: bad override (1 process)",
             ["bash", f"{REPO}/run_train.sh", CFG, "data.data_path=lat", "train.output_dir=out", "train.max_steps=-1"],
             "error: override 'train.max_steps=-1'"))
    add(Case("launcher", "run_train.sh: unknown key (1 process)",
             ["bash", f"{REPO}/run_train.sh", CFG, "train.bogus=1"], "error: override 'train.bogus=1'"))
    add(Case("launcher", "run_train.sh: bad data (2 processes)",
             ["bash", f"{REPO}/run_train.sh", CFG, "data.data_path=nowhere", "train.output_dir=out"], "nowhere",
             env={"GPUS_PER_NODE": "2"}))
    add(Case("launcher", "run_inference.sh: missing checkpoint",
             ["bash", f"{REPO}/run_inference.sh", CFG, "data.data_path=lat", "ckpt_path=missing.pt"], "missing.pt"))
    for script in ("run_demo.sh", "run_tests.sh", "run_train.sh", "run_inference.sh", "run_fast_inference.sh",
                   "run_extraction.sh", "run_train_tokenizer.sh", "run_tokenizer_eval.sh", "run_fid_eval.sh"):
        add(Case("launcher", f"{script} --help", ["bash", f"{REPO}/{script}", "--help"], (), expect="help"))
    for script in ("train.py", "inference.py", "train_tokenizer.py", "extract_features.py", "tools/adm_evaluator.py"):
        add(Case("launcher", f"{script} --help", [PY, f"{REPO}/{script}", "--help"], (), expect="help"))
    return c


def build_fixture(base: Path) -> None:
    """Latents, a finished tiny training run (checkpoints 2 and 4), npz batches, an image folder."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for cmd in ([PY, "-m", "datasets.tiny_latents", "lat", "--num", "64"],
                TRAIN + ["train.max_steps=4", "train.ckpt_every=2", "train.log_every=2"],
                [PY, "-m", "datasets.toy", "--root", "images", "--num-per-class", "2", "--image-size", "32",
                 "--split", "train"],
                [PY, "-c", "import numpy as np; r=np.random.default_rng(0); "
                 "u=lambda n,s: r.integers(0,256,(n,s,s,3),dtype=np.uint8); "
                 "np.savez('ref32.npz', arr_0=u(16,32)); np.savez('s32.npz', arr_0=u(16,32)); "
                 "np.savez('s64.npz', arr_0=u(16,64)); np.savez('sfloat.npz', arr_0=u(16,32).astype('float32')/255); "
                 "np.savez('snokey.npz', images=u(16,32)); np.savez('sfew.npz', arr_0=u(1,32))"]):
        subprocess.run(cmd, cwd=base, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def last_line(text: str) -> str:
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def relative(text: str, work: Path) -> str:
    """`text` with this checkout's and the case's folder left out, as the table shows paths."""
    return text.replace(f"{REPO}/", "").replace(f"{work}/", "")


def shown_command(case: Case, work: Path) -> str:
    """The command as a user would type it (repository-relative, `python`)."""
    words = [shlex.quote(relative(a, work)) for a in case.cmd]
    words = ["python" if a == shlex.quote(PY) else a for a in words]
    return " ".join([f"{k}={shlex.quote(v)}" for k, v in case.env.items()] + words)


def run_case(case: Case, base: Path, timeout: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="audit-"))
    try:
        for entry in base.iterdir():
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, work / entry.name)
        Path(str(work) + ".tmp").mkdir()
        env = dict(_env(work), MASTER_PORT=str(20000 + (hash(case.name) % 20000)), **case.env)
        for step in case.setup:
            step(work)
        before, entries = _snapshot(work / "out"), sorted(p.name for p in work.iterdir())
        t0 = time.time()
        try:
            proc = subprocess.run(list(case.cmd), cwd=work, env=env, capture_output=True, text=True,
                                  timeout=timeout, errors="replace")
            rc, out = proc.returncode, proc.stdout + proc.stderr
            line = last_line(proc.stderr) or last_line(proc.stdout)
        except subprocess.TimeoutExpired:
            rc, out, line = 124, "", f"(timed out after {timeout} s)"
        seconds = time.time() - t0
        culprits = [case.culprit] if isinstance(case.culprit, str) else list(case.culprit)
        problems = []
        if case.expect == "fail":
            if rc == 0:
                problems.append("exit 0")
            if culprits and not any(c.lower() in line.lower() for c in culprits):
                problems.append("last line does not name " + " / ".join(repr(c) for c in culprits))
        elif rc != 0:
            problems.append(f"exit {rc}")
        elif case.expect == "recover" and not any(c in out for c in culprits):
            problems.append("the output does not name " + " / ".join(repr(c) for c in culprits))
        if case.expect == "help" and sorted(p.name for p in work.iterdir()) != entries:
            problems.append("--help created files")
        if case.protect and not _unchanged(before, _snapshot(work / "out")):
            problems.append("changed the earlier run's files")
        made = [p for p in case.absent if (work / p).exists() or (work / p).is_symlink()]
        if made:
            problems.append(f"created {made}")
        leaked = [str(p.relative_to(work)) for p in work.rglob("*") if p.is_file() and not p.is_symlink()
                  and SECRET.encode() in p.read_bytes()]
        if leaked or SECRET in out:
            problems.append(f"$AUDIT_SECRET written to {leaked or 'the output'}")
        return {"area": case.area, "name": case.name, "command": shown_command(case, work), "status": rc,
                "last": relative(line, work)[:240], "seconds": round(seconds, 1),
                "verdict": "ok" if not problems else "FAIL: " + "; ".join(problems), "output_tail": out[-2000:]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(str(work) + ".tmp", ignore_errors=True)


def write_table(rows: List[dict], path: Path, readme_rows: List[dict]) -> None:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    failed = [r for r in rows + readme_rows if r["verdict"] != "ok"]
    lines = [
        "# Reliability audit", "",
        "Bad inputs and faults against the entry scripts, one temporary directory per case, produced by",
        "`python tools/reliability_audit.py` (CPU, no weights: tiny configs, synthetic latents, random-init",
        "tokenizer and Inception). A case passes when the exit status is the expected one (non-zero for a",
        "bad input, 0 for `--help`), the last line of output names the culprit (file, key or flag), and an",
        "earlier finished run in `out/` is byte-identical afterwards (`--help`: no file created; logs may",
        "grow). Cases with side effects to rule out also check that the files they name were not created",
        "(e.g. `PWNED`, written only if a pickle's code ran) and that `$AUDIT_SECRET`, set for every case,",
        "appears in no file and no output. Commands run without a shell. Rows \"README\" are the README",
        "commands that run on CPU without weights, run as written beforehand (`--readme`; placeholders",
        "replaced by temporary paths). The Security section below the table is written by hand.", "",
        f"{len(rows) + len(readme_rows)} cases, {len(failed)} failing"
        f" (run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).", "",
        "| # | area | case | command | exit | last line | verdict |", "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows + readme_rows, 1):
        lines.append(f"| {i} | {r['area']} | {esc(r['name'])} | `{esc(r['command'])}` | {r['status']} | "
                     f"{esc(r['last'])} | {esc(r['verdict'])} |")
    kept = ""
    if path.is_file():   # hand-written sections (## ...) after the generated table are kept
        old = path.read_text()
        cut = old.find("\n## ")
        kept = old[cut:] if cut >= 0 else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n" + kept)


def readme_rows(tsv: Optional[str]) -> List[dict]:
    if not tsv or not Path(tsv).is_file():
        return []
    rows = []
    for line in Path(tsv).read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 5:
            continue
        label, cmd, rc, seconds, last = parts[:5]
        last = last.split("\r")[-1]
        rows.append({"area": "README", "name": label, "command": cmd, "status": int(rc),
                     "last": last[-200:], "verdict": "ok" if rc == "0" else f"FAIL: exit {rc}"})
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs/reliability.md"), help="markdown table")
    parser.add_argument("--only", default=None, help="run the cases of this area, or whose name contains this")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per case")
    parser.add_argument("--jobs", type=int, default=3, help="cases run at once")
    parser.add_argument("--readme", default=None, help="TSV of README command runs to add as rows")
    args = parser.parse_args(argv)
    selected = [c for c in cases() if args.only is None or args.only in c.name or args.only == c.area]
    base = Path(tempfile.mkdtemp(prefix="audit-base-"))
    try:
        build_fixture(base)
        rows = []
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_case, case, base, args.timeout) for case in selected]
            for i, (case, future) in enumerate(zip(selected, futures), 1):
                row = future.result()
                rows.append(row)
                print(f"[{i}/{len(selected)}] {row['verdict'][:60]:<60} {case.area}: {case.name} ({row['seconds']} s)\n"
                      f"    exit {row['status']}: {row['last'][:160]}", flush=True)
        write_table(rows, Path(args.out), readme_rows(args.readme))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    failed = sum(r["verdict"] != "ok" for r in rows)
    print(f"{len(rows)} cases, {failed} failing -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
