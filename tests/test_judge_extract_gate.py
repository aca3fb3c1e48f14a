"""Program extraction and the static gate: pure Python, no PyMC."""

from __future__ import annotations

import pytest

from synthstats.judge.extract import extract_program
from synthstats.judge.gate import check_program
from synthstats.judge.score import Score
from synthstats.judge.scoring import prepare

PROGRAM = """import pymc as pm
import numpy as np
with pm.Model() as model:
    a = pm.Normal("a", 0, 5)
    s = pm.HalfNormal("s", 1)
    pm.Normal("y", a + np.log(data["age"]), s, observed=data["length"])
"""


def fenced(body: str, tag: str = "python") -> str:
    return f"```{tag}\n{body}```\n"


def test_extract_takes_last_closed_python_block_outside_thinking():
    completion = (
        "<think>draft:\n" + fenced("x = 'from thinking'") + "</think>\n"
        "First try:\n" + fenced("x = 1") + "Better:\n" + fenced(PROGRAM) + "Done."
    )
    assert extract_program(completion) == PROGRAM


def test_extract_ignores_other_languages():
    completion = fenced(PROGRAM) + fenced("pip install pymc\n", tag="bash")
    assert extract_program(completion) == PROGRAM


@pytest.mark.parametrize(
    "completion",
    [
        "no code at all",
        "```python\nimport pymc as pm\nwith pm.Model() as model:",  # truncated inside the fence
        fenced("x = 1") + "and then\n```python\nimport pymc",  # earlier block, final one open
        "<think>still thinking " + fenced(PROGRAM),  # thinking never closed
        fenced("echo hi", tag="bash"),
    ],
)
def test_extract_finds_no_program(completion):
    assert extract_program(completion) is None
    prepared = prepare(completion)
    assert isinstance(prepared, Score) and prepared.error_kind == "no_program"


def test_gate_passes_a_plain_model():
    assert check_program(PROGRAM) is None
    custom = "class Scale:\n    def __init__(self, value):\n        self.value = value\n"
    assert check_program(custom) is None
    assert check_program("from scipy import stats\nimport pytensor.tensor as pt\n") is None
    assert check_program("name = 'beta_{}'.format(3)\nlabel = f'x{name}'\n") is None
    local_items = "x = [0, 1]\nx[0] = 2\nm = {}\nm['a'] = [1]\nm['a'][0] = 3\n"
    assert check_program(local_items) is None


def test_gate_reports_syntax_errors_with_the_line():
    assert check_program("x = 1\ny = (\n") == ("syntax", "line 2: '(' was never closed")


@pytest.mark.parametrize(
    "source",
    [
        "import os",
        "import subprocess\nsubprocess.run(['sh', '-c', 'id'])",
        "from os import system",
        "import socket",
        "import scipy",
        "from numpy import *",
        "from . import x",
        "import pymc as pm\npm.sampling.jax",
        "open('/etc/passwd').read()",
        "import numpy as np\nnp.save('/tmp/canary.npy', np.zeros(3))",
        "import numpy as np\nnp.zeros(3).tofile('/tmp/canary')",
        "import pytensor\nraise ValueError(pytensor.configdefaults.os.environ['KEY'])",
        "import pytensor\npytensor.config.cxx = 'sh'",
        "().__class__.__base__.__subclasses__()",
        "__builtins__['eval']('1')",
        "getattr(data, '__cl' + 'ass__')",
        "f = eval",
        "exec('import os')",
        "__import__('os')",
        "'{0.__class__}'.format(data)",
        "t = '{0.x}'\nt.format(data)",
        "match data:\n    case object(__class__=c):\n        pass",
        "import numpy as np\nnp.lib.format.open_memmap('x')",
        "breakpoint()",
        "vars()",
        "import pymc as pm\npm.sampling.mcmc.init_nuts = print",  # forging the judge's sampler
        "import pymc as pm\nM = pm.Model\nM.compile_logp = print",
        "import pymc as pm\ndel pm.sample",
        "import pytensor.tensor as pt\nclass X(pt.elemwise.Elemwise):\n"
        "    def c_code(self, *args):\n        return 'system(\"id\");'\n",
        "X = type('X', (object,), {'c_support_code': print})",
        # frames, code objects, generators, coroutines, tracebacks (issue 17)
        "def g():\n    yield 1\nf = g().gi_frame.f_back.f_globals",
        "def g():\n    yield 1\nc = g().gi_code.co_consts",
        "async def c():\n    pass\nf = c().cr_frame",
        "async def a():\n    yield 1\nf = a().ag_frame",
        "try:\n    1 / 0\nexcept Exception as e:\n    f = e.__traceback__",
        "def h(tb):\n    return tb.tb_frame.f_builtins",
        "def h(tb):\n    return tb.tb_next.f_locals",
        "def h(f):\n    return f.f_code.co_code",
        # three-argument type() and a class statement defining a C hook
        "X = type('X', (), {'c_' + 'code': print})",
        "t = type\nX = t('X', (), {})",
        "import pytensor.tensor as pt\nclass X(pt.elemwise.Elemwise):\n    c_code = print\n",
        "import pytensor.tensor as pt\nclass X(pt.Op):\n"
        "    def __init__(self):\n        self.c_code = print\n",
        "X = dict(c_code=print)",
        # shell, pickle and file functions reachable through allowed modules
        "import pytensor\npytensor.utils.output_subprocess_Popen(['id'])",
        "import pytensor\npytensor.utils.subprocess_Popen(['id'])",
        "import pytensor\npytensor.function_dump('/tmp/f', [], [])",
        "import pymc as pm\npm.parallel.cloudpickle.loads(b'')",
        "import pymc as pm\nx = pm.data.pd.read_csv('/etc/passwd')",
        "import pymc as pm\nx = pm.data.xr.open_dataset('/etc/passwd')",
        "import numpy as np\nx = np.loadtxt('/etc/passwd')",
        "import numpy as np\nx = np.fromfile('/etc/passwd')",
        "import numpy as np\nx = np.memmap('/etc/passwd')",
        "import numpy as np\nx = np.load('/tmp/x.npy', allow_pickle=True)",
        "import pytensor.tensor as pt\nf = pt.as_op",
        # global settings through item assignment (ic_scale flipped the ELPD's sign)
        "import pymc as pm\npm.backends.arviz.rcParams['stats.ic_scale'] = 'negative_log'",
        "import numpy as np\nnp.zeros(3).tolist()[0] = 1\nnp.core.x[0] = 1",
    ],
)
def test_gate_forbids(source):
    verdict = check_program(source)
    assert verdict is not None and verdict[0] == "forbidden", verdict


def test_gate_survives_deeply_nested_programs():
    verdict = check_program("x = " + "(" * 5000 + "1" + ")" * 5000)
    assert verdict is not None and verdict[0] == "syntax"
