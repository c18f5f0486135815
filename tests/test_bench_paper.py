"""bench paper: the commands it composes parse as the benches' own, its report puts each table beside the paper's
claim with the verdicts counted, and a table name it does not know is refused before any work."""

import argparse
from pathlib import Path

import pytest

from raypipe.bench.cli import bench_args
from raypipe.bench.paper import BUDGETS, TABLES, _table_argv, markdown, run_paper_bench, verdict_counts


@pytest.mark.parametrize("budget", list(BUDGETS))
def test_every_table_command_parses_as_that_bench(budget, tmp_path):
    inputs = {
        "generator": "/g",
        "reward": "/r",
        "pairs_vq": "/p1",
        "pairs_vq_mq": "/p2",
        "latent_reward_uniform": "/lu",
        "latent_reward_clean": "/lc",
    }
    args = argparse.Namespace(prompts=None)
    for table in TABLES:
        argv = _table_argv(table, args, BUDGETS[budget], tmp_path, inputs, "0,1")
        parsed = bench_args(argv[0], argv[1:])
        assert parsed.seeds == "0,1" and parsed.out == str(tmp_path / table)
        if table == "alignment":
            assert (parsed.pairs, parsed.weights) == ("/p1", "{VQ: 1}")
            assert parsed.variants == "sft,rwr,dpo_beta_t,dpo,dpo_sft"  # Table 3 + the SFT-term remedy
            assert parsed.prompts == str(BUDGETS[budget]["prompts"])
        if table == "alignment_vq_mq":
            assert (parsed.pairs, parsed.variants) == ("/p2", "dpo")
        if table == "nrg":
            assert (parsed.latent_reward, parsed.clean_latent_reward) == ("/lu", "/lc")
            assert parsed.strength == BUDGETS[budget]["strengths"]
    assert BUDGETS["full"]["prompts"] >= 128 and len(BUDGETS["full"]["seeds"].split(",")) >= 3  # the floor


def test_report_puts_tables_beside_claims(tmp_path):
    (tmp_path / "nrg").mkdir()
    (tmp_path / "nrg" / "nrg.md").write_text("# Flow-NRG in miniature\n\n| claim | verdict here |\n")
    claims = [{"verdict": "holds"}, {"verdict": "undecided at this budget"}, {"verdict": "holds"}]
    report = {
        "budget": "small",
        "seeds": "0,1",
        "wall_s": 120,
        "commands": {"nrg": "raypipe bench nrg --seeds 0,1"},
        "tables": {"nrg": {"claims": claims}},
    }
    assert verdict_counts(report) == {"holds": 2, "undecided at this budget": 1}
    md = markdown(report, tmp_path)
    assert "## nrg" in md and "The paper: Table 5" in md and "Flow-NRG in miniature" in md
    assert "`raypipe bench nrg --seeds 0,1`" in md


def test_unknown_tables_are_refused_before_any_work(tmp_path):
    args = argparse.Namespace(
        out=str(tmp_path / "p"), budget="small", seeds=None, prompts=None, tables="reward,table9", generator="g"
    )
    with pytest.raises(ValueError, match="table9"):
        run_paper_bench(args)
    assert not any(Path(tmp_path / "p").iterdir())
