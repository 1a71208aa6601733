"""Bad-input audit: run the entry scripts on ~100 wrong inputs and faults, one temp dir per case,
and write the table (command, last line, exit status, verdict) to docs/reliability.md.

    python tools/reliability_audit.py [--out docs/reliability.md] [--only SUBSTRING] [--readme TSV]

A case passes when its exit status is the expected one (non-zero for a bad input), its last output
line names the culprit (the file, key or flag), and an earlier run's output (`out/`, a finished
tiny training run) is byte-identical afterwards. CPU only, no weights: tiny configs, synthetic
latents, random-init tokenizer / Inception. `--readme TSV` adds rows for the README commands run
separately (label, command, status, seconds, last line; they take minutes each).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

REPO = Path(__file__).resolve().parents[1]
CFG = str(REPO / "configs/tiny/lightningdit_tiny.yaml")
TOK = str(REPO / "configs/tiny/tiny_vavae_f4d4.yaml")
TOK_TRAIN = str(REPO / "configs/tokenizer/tiny_cpu.yaml")
PY = sys.executable
TRAIN = f"{PY} {REPO}/train.py {CFG} data.data_path=lat train.output_dir=out"
INFER = (f"{PY} {REPO}/inference.py {CFG} data.data_path=lat train.output_dir=out vae.config_path={TOK} "
         "--vae-random-init sample.fid_num=4 sample.num_sampling_steps=2 sample.per_proc_batch_size=4")
CKPT4 = "out/lightningdit_tiny/checkpoints/0000004.pt"
CKPT2 = "out/lightningdit_tiny/checkpoints/0000002.pt"
TOKTRAIN = (f"{PY} {REPO}/train_tokenizer.py {TOK_TRAIN} train.output_dir=tokout "
            "data.params.train.data_root=images data.params.validation.data_root=images")
EVAL = f"{PY} {REPO}/tools/adm_evaluator.py"
EXTRACT = f"{PY} {REPO}/extract_features.py"


@dataclass
class Case:
    area: str
    name: str
    cmd: str
    culprit: Union[str, Sequence[str]] = ()     # the last line must contain one of these
    expect: str = "fail"                        # fail | ok | help
    setup: str = ""                             # shell run first (not shown)
    protect: bool = True                        # out/ (an earlier run) must stay byte-identical


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


def cases() -> List[Case]:
    c: List[Case] = []
    add = c.append
    # --- config -------------------------------------------------------------------------------
    for script, extra in (("train.py", ""), ("inference.py", ""), ("train_tokenizer.py", "")):
        add(Case("config", f"{script}: no config", f"{PY} {REPO}/{script}{extra}", "no config file given"))
        add(Case("config", f"{script}: empty YAML", f"{PY} {REPO}/{script} empty.yaml", "empty.yaml: empty config",
                 setup=": > empty.yaml"))
    add(Case("config", "YAML is a list", f"{PY} {REPO}/train.py list.yaml", "list.yaml: expected a YAML mapping",
             setup="printf -- '- a\\n- b\\n' > list.yaml"))
    add(Case("config", "YAML syntax error", f"{PY} {REPO}/train.py bad.yaml", "bad.yaml: not valid YAML",
             setup="printf 'train: [1, 2\\n' > bad.yaml"))
    add(Case("config", "directory as config", f"{PY} {REPO}/train.py lat", "lat: is a directory"))
    add(Case("config", "missing config file", f"{PY} {REPO}/train.py nope.yaml", "config file not found: nope.yaml"))
    add(Case("config", "unknown key in YAML", f"{PY} {REPO}/train.py typo.yaml", "typo.yaml: unknown config key 'train.max_stepz'",
             setup="printf 'train:\\n  max_stepz: 3\\n' > typo.yaml"))
    add(Case("config", "wrong type in YAML", f"{PY} {REPO}/train.py typed.yaml", "typed.yaml: bad value for 'train.max_steps'",
             setup="printf 'train:\\n  max_steps: many\\n' > typed.yaml"))
    add(Case("config", "range error in YAML", f"{PY} {REPO}/train.py range.yaml", "range.yaml: bad value for 'optimizer.lr'",
             setup="printf 'optimizer:\\n  lr: -1\\n' > range.yaml"))
    add(Case("config", "unknown key override", f"{TRAIN} data.nope=1", "override 'data.nope=1'"))
    add(Case("config", "override without =", f"{TRAIN} train.max_steps", "train.max_steps"))
    add(Case("config", "override before config", f"{PY} {REPO}/train.py train.max_steps=3 {CFG}",
             "expected a config file before overrides"))
    add(Case("config", "unknown flag", f"{TRAIN} --bogus", "--bogus"))
    for override in ("train.max_steps=-1", "train.global_batch_size=0", "train.ckpt_every=0", "train.ema_decay=2",
                     "optimizer.lr=0", "optimizer.beta2=1", "data.num_classes=0", "model.class_dropout_prob=1.5",
                     "sample.num_sampling_steps=0", "sample.cfg_interval_start=2", "sample.timestep_shift=nan",
                     "sample.cfg_channels=some", "transport.path_type=Cosine", "train.max_steps=ten"):
        add(Case("config", f"override {override}", f"{TRAIN} {override}", f"override '{override}'"))
    add(Case("config", "image_size not divisible", f"{TRAIN} data.image_size=18", "data.image_size 18"))
    # --- data -----------------------------------------------------------------------------------
    shard = "lat/latents_rank00_shard000.safetensors"
    rewrite = (f"{PY} -c \"import sys,torch; from safetensors.torch import load_file, save_file; "
               f"t=load_file('{shard}'); exec(sys.argv[1]); save_file({{k: v.contiguous() for k, v in t.items()}}, '{shard}')\"")
    add(Case("data", "data_path missing", f"{TRAIN} data.data_path=nowhere", "nowhere"))
    add(Case("data", "no shards", TRAIN, "no *.safetensors latent shards", setup="rm lat/*.safetensors"))
    add(Case("data", "shard is a text file", TRAIN, "latents_rank00_shard000.safetensors: unreadable",
             setup=f"echo text > {shard}"))
    add(Case("data", "shard missing labels", TRAIN, "missing key(s) ['labels']",
             setup=rewrite + " \"del t['labels']\""))
    add(Case("data", "shard float64 latents", TRAIN, "latents_rank00_shard000.safetensors: dtypes",
             setup=rewrite + " \"t['latents']=t['latents'].double()\""))
    add(Case("data", "labels >= num_classes", TRAIN, "outside [0, 10)",
             setup=rewrite + " \"t['labels']=t['labels']*0+12\""))
    add(Case("data", "negative labels", TRAIN, "outside [0, 10)", setup=rewrite + " \"t['labels']=t['labels']*0-1\""))
    add(Case("data", "empty shards", TRAIN, "hold no latents",
             setup=" && ".join([rewrite.replace(shard, s) + " \"t={k: v[:0] for k, v in t.items()}\""
                                for s in ("lat/latents_rank00_shard000.safetensors", "lat/latents_rank00_shard001.safetensors")])))
    add(Case("data", "latents vs model.in_chans", f"{TRAIN} model.in_chans=8", "does not match the model's (8, 4, 4)"))
    add(Case("data", "latents vs latent grid", f"{TRAIN} data.image_size=32", "does not match the model's (4, 8, 8)"))
    add(Case("data", "fewer latents than a batch", f"{TRAIN} train.global_batch_size=128", "fewer than one global batch"))
    stats = f"{PY} -c \"import torch; o=torch.ones(1,4,1,1); torch.save(%s, 'lat/latents_stats.pt')\""
    add(Case("data", "stats missing", TRAIN, "latents_stats.pt", setup="rm lat/latents_stats.pt"))
    add(Case("data", "stats text file", TRAIN, "not a PyTorch stats file", setup="echo hi > lat/latents_stats.pt"))
    add(Case("data", "stats NaN", TRAIN, "NaN or inf", setup=stats % "{'mean': o*float('nan'), 'std': o}"))
    add(Case("data", "stats zero std", TRAIN, "std must be positive", setup=stats % "{'mean': o, 'std': o*0}"))
    add(Case("data", "stats wrong shape", TRAIN, "expected (1, C, 1, 1)", setup=stats % "{'mean': o[0,:,0,0], 'std': o[0,:,0,0]}"))
    add(Case("data", "stats without std", TRAIN, "expected a dict with 'mean' and 'std'", setup=stats % "{'mean': o}"))
    add(Case("data", "stats channels", TRAIN, "3 channels", setup=stats % "{'mean': o[:,:3], 'std': o[:,:3]}"))
    add(Case("data", "valid_path missing", f"{TRAIN} data.valid_path=nowhere train.valid_every=2", "nowhere"))
    # --- checkpoints -------------------------------------------------------------------------------
    add(Case("checkpoint", "inference: ckpt_path unset", INFER, "ckpt_path is not set"))
    add(Case("checkpoint", "inference: ckpt missing", f"{INFER} ckpt_path=missing.pt", "missing.pt"))
    add(Case("checkpoint", "inference: text file as ckpt", f"{INFER} ckpt_path=notes.pt", "not a PyTorch checkpoint: notes.pt",
             setup="echo hello > notes.pt"))
    add(Case("checkpoint", "inference: random bytes as ckpt", f"{INFER} ckpt_path=rand.pt", "rand.pt",
             setup="head -c 4096 /dev/urandom > rand.pt"))
    add(Case("checkpoint", "inference: truncated ckpt", f"{INFER} ckpt_path=trunc.pt", "trunc.pt",
             setup=f"head -c 2000 {CKPT4} > trunc.pt"))
    add(Case("checkpoint", "inference: stats file as ckpt", f"{INFER} ckpt_path=lat/latents_stats.pt", "latents_stats.pt"))
    add(Case("checkpoint", "inference: ckpt of another model size", f"{INFER} ckpt_path={CKPT4} model.hidden_size=32",
             ("0000004.pt", "hidden_size", "shape")))
    add(Case("checkpoint", "train: weight_init missing", f"{TRAIN} train.weight_init=nope.pt", "nope.pt"))
    add(Case("checkpoint", "train: weight_init text", f"{TRAIN} train.weight_init=notes.pt", "not a PyTorch checkpoint: notes.pt",
             setup="echo hello > notes.pt"))
    add(Case("checkpoint", "inference: tokenizer config missing", f"{INFER} ckpt_path={CKPT4} vae.config_path=tok.yaml", "tok.yaml"))
    add(Case("checkpoint", "inference: stats missing", f"{INFER} ckpt_path={CKPT4} data.data_path=nowhere", "nowhere/latents_stats.pt"))
    # --- runs -----------------------------------------------------------------------------------------
    add(Case("runs", "re-run into an existing experiment", f"{TRAIN} train.max_steps=4",
             ("lightningdit_tiny", "train.resume", "overwrite")))
    add(Case("runs", "resume with a changed lr", f"{TRAIN} train.max_steps=6 train.resume=true optimizer.lr=0.5",
             "optimizer.lr"))
    add(Case("runs", "resume, corrupt newest checkpoint", f"{TRAIN} train.max_steps=4 train.resume=true",
             "0000004.pt", expect="recover", setup=f"head -c 1000 {CKPT4} > x && mv x {CKPT4}", protect=False))
    add(Case("runs", "second run while locked", f"{TRAIN} train.max_steps=6 train.resume=true", ("lock", "in use"),
             setup=f"printf '{{\"pid\": {os.getpid()}, \"host\": \"'$(hostname)'\", \"started\": 0}}' > out/lightningdit_tiny/.run.lock"))
    add(Case("runs", "resume without exp_name", f"{TRAIN} train.exp_name=null train.resume=true", "train.exp_name"))
    add(Case("runs", "sampling resumed with a replaced checkpoint",
             f"{INFER} ckpt_path=model.pt", ("model.pt", "checkpoint"),
             setup=f"cp {CKPT4} model.pt && {INFER} ckpt_path=model.pt >/dev/null 2>&1; cp {CKPT2} model.pt", protect=False))
    # --- evaluation ------------------------------------------------------------------------------------
    add(Case("evaluation", "evaluator: sample file missing", f"{EVAL} ref32.npz missing.npz --random-init --device cpu", "missing.npz"))
    add(Case("evaluation", "evaluator: reference missing", f"{EVAL} missing.npz s32.npz --random-init --device cpu", "missing.npz"))
    add(Case("evaluation", "evaluator: 32 px ref vs 64 px samples", f"{EVAL} ref32.npz s64.npz --random-init --device cpu",
             ("64", "size")))
    add(Case("evaluation", "evaluator: float samples", f"{EVAL} ref32.npz sfloat.npz --random-init --device cpu", ("uint8", "sfloat.npz")))
    add(Case("evaluation", "evaluator: npz without arr_0", f"{EVAL} ref32.npz snokey.npz --random-init --device cpu", ("arr_0", "snokey.npz")))
    add(Case("evaluation", "evaluator: text file as npz", f"{EVAL} ref32.npz notes.npz --random-init --device cpu", "notes.npz",
             setup="echo hello > notes.npz"))
    add(Case("evaluation", "evaluator: too few images", f"{EVAL} ref32.npz sfew.npz --random-init --device cpu", ("sfew.npz", "images")))
    add(Case("evaluation", "evaluator: text Inception weights", f"{EVAL} ref32.npz s32.npz --inception-weights notes.pt --device cpu",
             "notes.pt", setup="echo hello > notes.pt"))
    add(Case("evaluation", "evaluator: weights missing", f"{EVAL} ref32.npz s32.npz --inception-weights nope.pth --device cpu", "nope.pth"))
    add(Case("evaluation", "run_fid_eval.sh with one argument", f"bash {REPO}/run_fid_eval.sh ref32.npz", "usage"))
    add(Case("evaluation", "save_npz: missing folder", f"{PY} {REPO}/tools/save_npz.py nowhere", "nowhere"))
    add(Case("evaluation", "save_npz: empty folder", f"{PY} {REPO}/tools/save_npz.py emptydir", "emptydir", setup="mkdir emptydir"))
    add(Case("evaluation", "make_reference_batch: missing folder",
             f"{PY} {REPO}/tools/make_reference_batch.py nowhere ref.npz --random-init --device cpu", "nowhere"))
    add(Case("evaluation", "tokenizer eval: data path missing",
             f"{PY} {REPO}/tools/evaluate_tokenizer.py --config {TOK} --data-path nowhere --random-init --skip-fid --skip-lpips",
             "nowhere"))
    add(Case("evaluation", "tokenizer eval: config missing",
             f"{PY} {REPO}/tools/evaluate_tokenizer.py --config tok.yaml --data-path images --random-init --skip-fid --skip-lpips",
             "tok.yaml"))
    # --- tokenizer / extraction ---------------------------------------------------------------------
    for override, key in (("data.params.batch_size=0", "data.params.batch_size"), ("train.max_steps=-3", "train.max_steps"),
                          ("lightning.trainer.precision=16", "lightning.trainer.precision"),
                          ("model.params.lossconfig.params.disc_start=null", "disc_start"),
                          ("model.params.use_vf=siglip", "use_vf")):
        add(Case("tokenizer", f"train_tokenizer {override}", f"{TOKTRAIN} {override}", key))
    add(Case("tokenizer", "train_tokenizer: data root missing",
             f"{TOKTRAIN} data.params.train.data_root=nowhere train.max_steps=2", "nowhere"))
    add(Case("tokenizer", "train_tokenizer: init_weight text", f"{TOKTRAIN} init_weight=notes.pt train.max_steps=2",
             "notes.pt", setup="echo hello > notes.pt"))
    add(Case("tokenizer", "extraction: data path missing",
             f"{EXTRACT} --data-path nowhere --output-path ext --tokenizer-config {TOK} --random-init-tokenizer --image-size 16",
             "nowhere"))
    add(Case("tokenizer", "extraction: tokenizer config missing",
             f"{EXTRACT} --data-path images --output-path ext --tokenizer-config tok.yaml --image-size 32", "tok.yaml"))
    add(Case("tokenizer", "extraction: stats-only on an empty dir", f"{EXTRACT} --output-path emptydir --stats-only",
             "emptydir", setup="mkdir emptydir"))
    add(Case("tokenizer", "latent_vis: input missing", f"{PY} {REPO}/tools/latent_vis.py nowhere --out-dir vis", "nowhere"))
    # --- launchers ---------------------------------------------------------------------------------
    add(Case("launcher", "run_train.sh: bad override (1 process)",
             f"bash {REPO}/run_train.sh {CFG} data.data_path=lat train.output_dir=out train.max_steps=-1",
             "error: override 'train.max_steps=-1'"))
    add(Case("launcher", "run_train.sh: bad data (2 processes)",
             f"GPUS_PER_NODE=2 bash {REPO}/run_train.sh {CFG} data.data_path=nowhere train.output_dir=out", "nowhere"))
    add(Case("launcher", "run_inference.sh: missing checkpoint",
             f"bash {REPO}/run_inference.sh {CFG} data.data_path=lat ckpt_path=missing.pt", "missing.pt"))
    for script in ("run_demo.sh", "run_tests.sh", "run_train.sh", "run_inference.sh", "run_fast_inference.sh",
                   "run_extraction.sh", "run_train_tokenizer.sh", "run_tokenizer_eval.sh", "run_fid_eval.sh"):
        add(Case("launcher", f"{script} --help", f"bash {REPO}/{script} --help", (), expect="help"))
    for script in ("train.py", "inference.py", "train_tokenizer.py", "extract_features.py", "tools/adm_evaluator.py"):
        add(Case("launcher", f"{script} --help", f"{PY} {REPO}/{script} --help", (), expect="help"))
    return c


def build_fixture(base: Path) -> None:
    """Latents, a finished tiny training run (checkpoints 2 and 4), npz batches, an image folder."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = lambda cmd: subprocess.run(cmd, shell=True, cwd=base, env=env, check=True,  # noqa: E731
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run(f"{PY} -m datasets.tiny_latents lat --num 64")
    run(f"{TRAIN} train.max_steps=4 train.ckpt_every=2 train.log_every=2")
    run(f"{PY} -m datasets.toy --root images --num-per-class 2 --image-size 32 --split train")
    run(f"{PY} -c \"import numpy as np; r=np.random.default_rng(0); u=lambda n,s: r.integers(0,256,(n,s,s,3),dtype=np.uint8); "
        "np.savez('ref32.npz', arr_0=u(16,32)); np.savez('s32.npz', arr_0=u(16,32)); np.savez('s64.npz', arr_0=u(16,64)); "
        "np.savez('sfloat.npz', arr_0=u(16,32).astype('float32')/255); np.savez('snokey.npz', images=u(16,32)); "
        "np.savez('sfew.npz', arr_0=u(1,32))\"")


def last_line(text: str) -> str:
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def run_case(case: Case, base: Path, timeout: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="audit-"))
    try:
        for entry in base.iterdir():
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, work / entry.name)
        tmp = Path(str(work) + ".tmp")
        tmp.mkdir()
        env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp),
                   MASTER_PORT=str(20000 + (hash(case.name) % 20000)))
        if case.setup:
            subprocess.run(case.setup, shell=True, cwd=work, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=timeout)
        before, entries = _snapshot(work / "out"), sorted(p.name for p in work.iterdir())
        t0 = time.time()
        try:
            proc = subprocess.run(case.cmd, shell=True, cwd=work, env=env, capture_output=True, text=True,
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
        shown = case.cmd.replace(f"{PY} ", "python ").replace(f"{REPO}/", "").replace(str(work) + "/", "")
        return {"area": case.area, "name": case.name, "command": shown, "status": rc, "last": line[:240],
                "seconds": round(seconds, 1), "verdict": "ok" if not problems else "FAIL: " + "; ".join(problems),
                "output_tail": out[-2000:]}
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
        "grow). Rows \"README\" are the README commands that run on CPU without weights, run as written",
        "beforehand (`--readme`; placeholders replaced by temporary paths).", "",
        f"{len(rows) + len(readme_rows)} cases, {len(failed)} failing"
        f" (run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).", "",
        "| # | area | case | command | exit | last line | verdict |", "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows + readme_rows, 1):
        lines.append(f"| {i} | {r['area']} | {esc(r['name'])} | `{esc(r['command'])}` | {r['status']} | "
                     f"{esc(r['last'])} | {esc(r['verdict'])} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


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
