"""What the subcommands share: --chat-template names, the model argument, port checks."""

from __future__ import annotations

import argparse
import socket

import pytest

from llavakit.cli.common import bind_port, model_path, read_template
from llavakit.processing.templates import TEMPLATES
from tests.http import free_port


def test_template_names_files_and_inline_text(tmp_path):
    assert read_template(None) is None
    assert read_template("llava") == TEMPLATES["llava"]
    (tmp_path / "t.jinja").write_text("{{ messages }}")
    assert read_template(str(tmp_path / "t.jinja")) == "{{ messages }}"
    assert read_template("{% for m in messages %}{{ m }}{% endfor %}").startswith("{% for")
    with pytest.raises(ValueError, match="unknown chat template 'nosuch'.*chatml.*llava"):
        read_template("nosuch")
    with pytest.raises(FileNotFoundError, match="missing.jinja"):
        read_template(str(tmp_path / "missing.jinja"))


def test_model_given_once_either_way(tmp_path):
    named = argparse.Namespace(model=str(tmp_path), model_positional=None)
    assert model_path(named) == str(tmp_path)
    assert model_path(argparse.Namespace(model=None, model_positional=str(tmp_path))) == str(tmp_path)
    with pytest.raises(ValueError, match="named twice"):
        model_path(argparse.Namespace(model="a", model_positional="b"))


def test_adapter_folder_is_not_a_model(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="LoRA adapter.*llavakit merge"):
        model_path(argparse.Namespace(model=str(tmp_path)))


def test_bind_port_refuses_out_of_range_and_taken_ports():
    with pytest.raises(ValueError, match="between 1 and 65535"):
        bind_port("127.0.0.1", 80000)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ValueError, match="already in use"):
            bind_port("127.0.0.1", taken.getsockname()[1])
    port = free_port()
    sock = bind_port("127.0.0.1", port)
    assert sock.getsockname() == ("127.0.0.1", port)
    sock.close()
