"""Tests of the parallel_strategy_calculator command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reference import parallel_strategy_calculator as calculator
from reference.strategy import (
    ParallelConfig,
    TrainingSettings,
    load_gpu,
    load_model,
    make_cluster,
    memory_per_gpu,
    recommend,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_ARGS = ["--model", "llama-2-70b", "--gpu", "h100-80gb", "--gpus", "64", "--gpus-per-node", "8"]


def run_main(capsys, argv):
    code = calculator.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_recommendation_table(capsys):
    code, out, err = run_main(capsys, BASE_ARGS)
    assert code == 0
    assert err == ""
    best = recommend(
        load_model("llama-2-70b"),
        make_cluster(load_gpu("h100-80gb"), 64, 8),
        TrainingSettings(seq_len=4096, global_batch=1024),
        top=1,
    )[0]
    label = f"tp{best.config.tp} pp{best.config.pp} dp{best.config.dp}"
    assert f"Recommended: {label}" in out
    assert "optimizer states" in out
    assert "tensor parallel" in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("1 ", "2 ", "3 ", "4 ", "5 "))]) == 5


def test_json_output_matches_library(capsys):
    code, out, _ = run_main(capsys, BASE_ARGS + ["--json", "--top", "3"])
    assert code == 0
    report = json.loads(out)
    assert report["num_gpus"] == 64
    assert len(report["configs"]) == 3
    first = report["configs"][0]
    config = ParallelConfig(**first["config"])
    settings = TrainingSettings(**report["settings"])
    memory = memory_per_gpu(load_model("llama-2-70b"), config, settings)
    assert first["memory_bytes"]["total"] == pytest.approx(memory.total)
    totals = [entry["step_time_s"]["total"] for entry in report["configs"]]
    assert totals == sorted(totals)


def test_one_configuration(capsys):
    code, out, _ = run_main(capsys, BASE_ARGS + ["--tp", "8", "--pp", "8", "--dp", "1"])
    assert code == 0
    assert "Recommended: tp8 pp8 dp1" in out


def test_png_written(capsys, tmp_path):
    path = tmp_path / "memory.png"
    code, _, _ = run_main(capsys, ["--model", "mixtral-8x7b", "--gpu", "a100-80gb", "--gpus", "32", "--png", str(path)])
    assert code == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--gpus", "6"], "num_gpus=6 is not a whole number of nodes of 8"),
        (["--gpus", "8"], "no valid configuration of llama-2-70b fits"),
        (["--tp", "8"], "give all of --tp, --pp and --dp"),
        (["--tp", "1", "--pp", "8", "--dp", "8"], "memory: pipeline rank 0 needs"),
        (["--seq-len", "0"], "--seq-len must be >= 1"),
        (["--mfu", "1.5"], "--mfu must be a fraction"),
    ],
)
def test_errors_exit_2_with_one_line(capsys, extra, needle):
    argv = BASE_ARGS + extra
    if "--gpus" in extra:
        argv = ["--model", "llama-2-70b", "--gpu", "h100-80gb", "--gpus-per-node", "8"] + extra
    code, out, err = run_main(capsys, argv)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: ")
    assert needle in err


def test_bad_model_file(capsys, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\nnum_layers = "many"\n')
    code, _, err = run_main(capsys, ["--model", str(path), "--gpu", "h100-80gb", "--gpus", "8"])
    assert code == 2
    assert str(path) in err
    assert "'num_layers' must be an integer" in err
    assert "Traceback" not in err


def test_unknown_model_name(capsys):
    code, _, err = run_main(capsys, ["--model", "gpt-5", "--gpu", "h100-80gb", "--gpus", "8"])
    assert code == 2
    assert "no models spec named 'gpt-5'" in err
    assert "llama-2-70b" in err


def test_module_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "reference.parallel_strategy_calculator", *BASE_ARGS],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0
    assert "Recommended:" in result.stdout
    failed = subprocess.run(
        [sys.executable, "-m", "reference.parallel_strategy_calculator", "--model", "llama-2-70b",
         "--gpu", "h100-80gb", "--gpus", "6", "--gpus-per-node", "8"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1


def test_argparse_errors_return_2(capsys):
    code, _, err = run_main(capsys, ["--model", "llama-2-70b", "--gpu", "h100-80gb"])
    assert code == 2
    assert "--gpus" in err
    help_code, help_out, _ = run_main(capsys, ["--help"])
    assert help_code == 0
    assert "--gpus-per-node" in help_out


def test_png_unwritable_path(capsys, tmp_path):
    path = tmp_path / "missing-folder" / "memory.png"
    code, out, err = run_main(capsys, BASE_ARGS + ["--png", str(path)])
    assert code == 2
    assert out == ""
    assert f"cannot write {path}" in err
