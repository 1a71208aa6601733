"""tools/bench/bench_sfd_sampler.py at a smoke size: it trains, its float64 reference agrees with an
independent float64 solve, the NFE of the fixed grids follow their step rules, the phase grid
removes the error of the steps that straddle the drift's jumps, and it prints its table and one
JSON line. (The samplers' orders of convergence: tests/transport/test_semantic_first.py.)"""
import json

from tools.bench import bench_sfd_sampler as bench


def test_bench_sfd_sampler_smoke(capsys):
    rows, checks = bench.main(["--train-steps", "20", "--train-batch", "8", "--hidden", "32", "--depth", "1",
                               "--heads", "2", "--items", "64", "--batch", "2", "--steps", "5", "9",
                               "--scales", "1.0", "1.5", "--check-steps", "41", "--reference-tol", "1e-8"])
    out = capsys.readouterr().out
    line = json.loads(out.strip().splitlines()[-1])
    assert line["bench"] == "bench_sfd_sampler" and len(line["rows"]) == 2 * (1 + 4 * 2)
    assert "RMS texture" in out
    for scale, c in checks.items():     # two independent float64 solutions agree far below any sampler's error
        assert c["reference_check_rms"] < 1e-5 and c["reference_nfe"] > 50
    by = {(r["guidance"], r["method"], r["grid_points"]): r for r in rows}
    for guidance in ("none", "autoguidance 1.5"):
        for n in (5, 9):
            assert by[(guidance, "euler", n)]["nfe"] == by[(guidance, "euler_phase", n)]["nfe"] == n - 1
            assert by[(guidance, "heun2", n)]["nfe"] == by[(guidance, "heun2_phase", n)]["nfe"] == 2 * (n - 1)
        assert by[(guidance, "dopri5", None)]["nfe"] >= 8
        for n in (5, 9):                    # a step across a jump costs O(h) even for Heun
            assert 10 * by[(guidance, "euler_phase", n)]["rms_all"] < by[(guidance, "euler", n)]["rms_all"]
            assert 10 * by[(guidance, "heun2_phase", n)]["rms_all"] < by[(guidance, "heun2", n)]["rms_all"]
