"""An option given twice on the command line (by any of its spellings: --X, --no-X, an old name) is refused in one
line naming it, before any work, by every command: the parser would keep the last value and drop the others."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dip_export.app
from dip_export import cli
from tests.test_hostile import one_line, run

COMMANDS = {  # (entry point, the arguments before the options, the click command whose options they are)
    "dip-sample": (cli.sample_main, [], typer.main.get_command(cli.sample_app)),
    "dip-bench": (cli.bench_main, [], typer.main.get_command(cli.bench_app)),
    **{
        f"dip-export {name}": (cli.export_main, [name], typer.main.get_command(cli.export_app).commands[name])  # type: ignore[attr-defined]
        for name in ("onnx", "schedule", "trt")
    },
}
WORK = ("run_sample", "run_bench", "run_export_onnx", "run_export_trt", "run_schedule")


def options(command) -> list:
    return [p for p in command.params if p.param_type_name == "option"]


def spellings(param) -> list[str]:
    return [*param.opts, *param.secondary_opts]


def use(param, spelling: str, inline: bool) -> list[str]:
    """One use of an option: a flag alone; a value after it or after '=' (the value does not matter: refused first)."""
    if param.is_flag:
        return [spelling]
    return [f"{spelling}=1"] if inline else [spelling, "1"]


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the command started its work")

    for name in WORK:
        monkeypatch.setattr(dip_export.app, name, refuse)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_option_given_twice_is_refused_naming_it(no_work: None, data) -> None:
    name = data.draw(st.sampled_from(sorted(COMMANDS)))
    main, prefix, command = COMMANDS[name]
    param = data.draw(st.sampled_from(options(command)))
    first, second = (data.draw(st.sampled_from(spellings(param))) for _ in range(2))
    between = data.draw(st.sampled_from([p for p in options(command) if p is not param and not p.is_eager]))
    args = [*use(param, first, data.draw(st.booleans())), *use(between, between.opts[0], False),
            *use(param, second, data.draw(st.booleans()))]  # fmt: skip
    code, err = run(main, *prefix, *args)
    one_line(code, err, 2, f"{param.opts[0]} is given twice", "give each option once")


def test_every_option_is_covered() -> None:
    """The options come from the commands themselves: each has a spelling, and the repeat check knows each one."""
    for _, _prefix, command in COMMANDS.values():
        names = [s for p in options(command) for s in spellings(p)]
        assert len(names) == len(set(names)) and all(n.startswith("--") for n in names)
        for param in options(command):
            with pytest.raises(Exception, match="given twice"):
                cli.refuse_repeated_options(command, [*use(param, param.opts[0], True)] * 2)


def test_each_option_once_passes_the_check() -> None:
    for _, prefix, command in COMMANDS.values():
        args = [a for p in options(command) if not p.is_eager for a in use(p, spellings(p)[-1], False)]
        cli.refuse_repeated_options(command, [*prefix, *args])  # no error: none repeated
        cli.refuse_repeated_options(command, [*prefix, "--", *args, *args])  # after '--': arguments, not options


def test_a_value_that_looks_like_an_option_is_a_value(tmp_path: Path) -> None:
    code, err = run(cli.sample_main, "--classes", "--out", "--out", tmp_path / "a.npz")  # --classes takes '--out'
    one_line(code, err, 2, "--classes")
    assert "twice" not in err


def test_single_use_still_works_and_batch_is_the_old_name_of_batch_size(tmp_path: Path) -> None:
    out = tmp_path / "a.npz"
    code, err = run(cli.sample_main, "--steps", "2", "--num-samples", "1", "--no-resume", "--batch", "1", "--out", out)
    assert code == 0 and out.is_file(), err
    code, err = run(cli.sample_main, "--steps", "2", "--batch", "1", "--batch-size", "2", "--out", out)
    one_line(code, err, 2, "--batch is the old name of --batch-size; give one of them")
    code, err = run(cli.sample_main, "--steps", "2", "--batch", "1", "--batch", "2", "--out", out)
    one_line(code, err, 2, "--batch is given twice")
