"""The README's "More than one machine" snippets run: the attention script under torchrun
(2 processes, as written) and the Dask fit on a local cluster (with fewer rows)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks():
    text = README.read_text()
    section = re.search(r"^## More than one machine\n(.*?)(?=^## )", text,
                        re.MULTILINE | re.DOTALL).group(1)
    return re.findall(r"^```python\n(.*?)^```", section, re.MULTILINE | re.DOTALL)


def test_attention_snippet_runs_under_torchrun(tmp_path):
    script = tmp_path / "attn.py"
    # each rank writes its own file (the two processes' prints interleave on one stdout)
    script.write_text(_blocks()[0] + f"\nopen(f{str(tmp_path)!r} + f'/rows{{rank}}', 'w')"
                      ".write(repr(tuple(out.shape)))\ndist.destroy_process_group()\n")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node=2", str(script)], capture_output=True, text=True,
                   timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    for rank in (0, 1):
        assert (tmp_path / f"rows{rank}").read_text() == "(1, 8, 2048, 64)"


def test_dask_snippet_runs(tmp_path):
    pytest.importorskip("distributed", reason="the optional 'dask' extra is not installed")
    code = _blocks()[1].replace("1_000_000", "100_000").replace("100_000, 8)", "20_000, 8)")
    script = tmp_path / "krr.py"
    script.write_text("if __name__ == '__main__':\n" + "".join(
        f"    {line}\n" for line in code.splitlines()) +
        "    print('rmse', float(((pred - y) ** 2).mean().compute()) ** 0.5)\n"
        "    client.close()\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, check=True)
    rmse = float(out.stdout.split("rmse")[1])
    assert rmse < 0.35  # sin(x0) + x1 x2 with a degree-2 polynomial kernel: 0.25 measured
