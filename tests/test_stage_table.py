"""Every list of stages follows the stage table, flows.stages.COMPONENTS: the pipeline config's
stages (StagesConfig, which cannot import the table), the stage flows, the `draftedit run` and
`pipeline --from-stage` choices, and the stages preflight loads."""

from __future__ import annotations

import argparse
from dataclasses import fields

from flows.config import STAGE_ORDER, StagesConfig, load_pipeline_config
from flows.stages import COMPONENTS


def _choices(module, dest: str) -> list[str]:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return list(next(a for a in parser._actions if a.dest == dest).choices)


def test_the_pipeline_config_and_the_flows_list_the_table_s_stages_in_order():
    from flows.stage_flows import STAGE_FLOWS

    assert [f.name for f in fields(StagesConfig)] == list(COMPONENTS) == list(STAGE_ORDER)
    assert list(STAGE_FLOWS) == list(COMPONENTS)


def test_the_cli_stage_choices_are_the_table_s():
    from flows import pipeline, stage_cli

    assert _choices(stage_cli, "stage") == list(COMPONENTS)
    assert _choices(pipeline, "from_stage") == list(COMPONENTS)


def test_preflight_loads_each_enabled_stage_with_its_schema():
    from flows.preflight import check_pipeline

    cfg = load_pipeline_config("fast", ["stages.rl.enabled=false"])
    configs = check_pipeline(cfg)
    assert list(configs) == [s for s in COMPONENTS if s != "rl"]
    assert all(isinstance(configs[s], COMPONENTS[s].schema) for s in configs)
