"""The settings table: every flag is well formed and the whole command line parses."""

from __future__ import annotations

import argparse

from breakglass import settings


def test_every_option_names_a_flag_an_env_variable_a_help_and_a_type():
    for option in settings._OPTIONS:
        assert len(option) == 4, option
        flag, env, help_, type_ = option
        assert flag.startswith("--") and env.isupper() and help_ and type_ in (str, int)


def test_the_defaults_parse_into_settings():
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    parsed = settings.from_args(parser.parse_args(["--alertmanager-url", "http://127.0.0.1:9093"]))
    assert parsed.alertmanager_url == "http://127.0.0.1:9093"
    assert parsed.resync_interval.total_seconds() == 600
