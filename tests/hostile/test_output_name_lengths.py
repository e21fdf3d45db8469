"""Every output name is measured before anything is looked up or run (`ownership.check_output_name`, through
`io.check_outputs` and `io.check_replaceable_folder`): a component longer than the file system takes, anywhere in
an output path of any command, is one line of the tool's with exit 2 before any work, never the OS's own text (a
lookup of such a name fails with ENAMETOOLONG) nor a refusal after sampling."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import cli
from tests.test_hostile import one_line, run

OUTPUTS = {
    "--out": (cli.sample_main, ["--steps", "1", "--num-samples", "1", "--out", "{path}.npz"]),
    "--png-dir": (cli.sample_main, ["--steps", "1", "--num-samples", "1", "--out", "{tmp}/o.npz", "--png-dir", "{path}"]),
    "--json": (cli.bench_main, ["--steps", "1", "--backends", "torch", "--json", "{path}.json"]),
    "--plot": (cli.bench_main, ["--steps", "1", "--backends", "torch", "--plot", "{path}.png"]),
    "--output-dir": (cli.export_main, ["onnx", "--output-dir", "{path}"]),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(OUTPUTS)), st.integers(256, 400), st.integers(0, 2), st.integers(0, 2),
       st.sampled_from(["p", "é"]))  # fmt: skip
def test_a_name_too_long_anywhere_in_an_output_path_is_refused_first(tmp_path_factory, no_sampling, option, length,
                                                                      before, after, letter):  # fmt: skip
    tmp = tmp_path_factory.mktemp("names")
    long = (letter * length).encode()[:length].decode(errors="ignore")
    path = Path(tmp, *["d"] * before, long, *["e"] * after)
    main, args = OUTPUTS[option]
    code, err = run(main, *[a.format(path=path, tmp=tmp) for a in args])
    one_line(code, err, 2, "too long")
    assert long not in err and long[:40] in err  # the name is cut, never printed whole, but its start says which
    assert sorted(p.name for p in tmp.iterdir()) == []  # nothing made, no folder on the way
