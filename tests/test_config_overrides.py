"""Overrides that address a list item by index fail with a ConfigError naming the fix."""

import pytest

from components.config import CONF_DIR, ConfigError, load_config
from components.data.config import DataConfig


def test_list_item_override_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="override the whole list"):
        load_config(DataConfig, CONF_DIR / "data" / "default.yaml", ["cpt.external.0.path=x"])
