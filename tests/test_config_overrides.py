"""Overrides that address a list item by index fail with a ConfigError naming the fix."""

import pytest

from components.config import CONF_DIR, ConfigError, load_config
from components.data.config import DataConfig


def test_list_item_override_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="override the whole list"):
        load_config(DataConfig, CONF_DIR / "data" / "default.yaml", ["cpt.external.0.path=x"])


def test_a_mapping_override_replaces_the_default_mapping():
    from components.data import load_data_config

    cleared = load_data_config(overrides=["sft.synthetic.families=[addition]", "sft.synthetic.params={}",
                                          "cpt.synthetic.families=[sum]", "cpt.synthetic.params={}"])
    assert cleared.sft.synthetic.params == {} and cleared.cpt.synthetic.params == {}
    replaced = load_data_config(overrides=["sft.synthetic.params={sort: {max_len: 5}}"])
    assert replaced.sft.synthetic.params == {"sort": {"max_len": 5}}  # sudoku4's default entry is gone
