"""rps: the Robust Parameter Server exchange (Yu et al., ICML 2019) under any model.

The exchange of ``rps train`` as a call: your script trains its model (PyTorch, NumPy,
anything that keeps its parameters in one float32 array) and, after every local update,
hands the array to :meth:`Exchange.step`, which runs one step of RPS over MPI (or UDP)
with rps's drop models and writes rps's metrics file::

    import numpy as np, rps
    ex = rps.Exchange(colocated=True, drop_rate=0.1, seed=1, metrics="run.h5")
    params = np.zeros(n, dtype=np.float32)   # or a flat CPU torch tensor
    for step in range(steps):
        ...                                  # forward, backward, update params in place
        ex.log(loss=loss, accuracy=acc, samples=batch)
        ex.step(params)                      # in place: every rank, every step
    ex.close()

Run it with ``mpirun -n 4 python script.py``. Options are the flags of ``rps train``
that concern the exchange, with ``_`` for ``-`` (``drop_rate=0.1`` is ``--drop-rate
0.1``, ``colocated=True`` is ``--colocated``; ``rps.OPTIONS`` lists them), validated by
the same code, so errors read as the command line's. Every method but ``log`` and
``set_attrs`` is collective: every rank calls it, in the same order. An error every rank
found together (a bad buffer anywhere, ranks started with other options) is raised on
every rank as :class:`Error` with ``agreed`` True; any other uncaught exception aborts
the whole MPI job, so that no rank waits for one that is gone. docs/python.md has more.
"""

import atexit
import itertools
import sys
import threading
import weakref

import numpy as np

from . import _rps
from ._rps import Error

__all__ = ["Exchange", "Error", "local_exchanges", "OPTIONS"]

#: The options of :class:`Exchange` (``rps train`` flags without their ``--``).
OPTIONS = tuple(name.replace("-", "_") for name in _rps.OPTIONS)

# Open exchanges, in creation order (closed at exit in that order on every rank).
_open = weakref.WeakValueDictionary()
_counter = itertools.count()
# Whether the interpreter is ending on an error that every rank raised.
_agreed_failure = False


def _flags(options):
    """``rps train`` flags from keyword options: ``None`` and ``False`` are left out,
    ``True`` is a bare flag, anything else its ``str``."""
    flags = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        else:
            flags += [flag, str(value)]
    return flags


def _command_line():
    return " ".join(["python"] + sys.argv)


def _array(buffer):
    """``(array, None)`` for a usable buffer (a view of its memory, never a copy), or
    ``(None, why)``."""
    if isinstance(buffer, np.ndarray):
        arr = buffer
    elif hasattr(buffer, "detach") and hasattr(buffer, "numpy") and hasattr(buffer, "device"):
        # A PyTorch tensor: its CPU memory, shared (no copy).
        if buffer.device.type != "cpu":
            return None, (
                f"the buffer is a tensor on {buffer.device}: the exchange works on CPU "
                "memory (copy it to a CPU tensor and back)"
            )
        arr = buffer.detach().numpy()
    else:
        return None, (
            f"the buffer is a {type(buffer).__name__}: pass a NumPy array or a CPU "
            "PyTorch tensor of float32"
        )
    if arr.dtype != np.float32:
        return None, (
            f"the buffer's dtype is {arr.dtype}: the exchange takes float32 (the "
            "model's parameters as one float32 array)"
        )
    if not arr.flags.c_contiguous:
        return None, (
            "the buffer is not contiguous: pass one contiguous float32 array (for "
            "PyTorch, torch.nn.utils.parameters_to_vector or one flat tensor that the "
            "parameters view)"
        )
    if not arr.flags.writeable:
        return None, "the buffer is read-only: the exchange writes the averaged model into it"
    return arr.reshape(-1), None


class Exchange:
    """One rank's RPS exchange over MPI (UDP with ``transport="udp"``).

    Keyword options are ``rps train``'s exchange flags (see the module's help and
    ``rps.OPTIONS``); ``metrics=PATH`` makes rank 0 write the run's metrics file, created
    at the first step (which fixes the model's size). Collective: every rank of the job
    creates its exchange with the same options.
    """

    def __init__(self, **options):
        self._ex = _rps.Exchange(_flags(options), _command_line())
        _open[next(_counter)] = self

    @classmethod
    def _wrap(cls, native):
        ex = cls.__new__(cls)
        ex._ex = native
        return ex

    def step(self, buffer):
        """One exchange step on ``buffer``, this rank's parameters (float32, contiguous,
        writable; the same length on every rank), in place: on return each block whose
        average arrived holds it, the others keep this rank's values. A pure server
        (dedicated mode) passes a buffer of the same length, which it leaves as it is.
        Returns this rank's counters of the step (messages and packets sent, dropped and
        received, seconds in the exchange). Collective."""
        arr, why = _array(buffer)
        return self._ex.step(arr, why)

    def average(self, buffer):
        """Replaces ``buffer`` with the mean of the workers' buffers (reliable: for
        evaluating the averaged model, as ``rps train`` does). Collective."""
        arr, why = _array(buffer)
        self._ex.average(arr, why)

    def barrier(self):
        """Waits until every rank has called it. Collective."""
        self._ex.barrier()

    def gather(self, value):
        """Every rank's ``value`` (a float), as a list in rank order: for timings or
        values wanted from all ranks. Collective."""
        return self._ex.gather(float(value))

    def log(self, step=None, *, loss=None, accuracy=None, samples=1, test_loss=None,
            test_accuracy=None):
        """Records values in the metrics file. ``loss`` (mean over the minibatch) and
        ``accuracy`` of this rank's ``samples`` samples belong to the step in progress,
        the one the next :meth:`step` exchanges (``step``, if given, must be its number,
        ``steps_done + 1``); every worker logs its own and the file holds their mean.
        ``test_loss`` and ``test_accuracy`` are an evaluation after ``step`` steps
        (default ``steps_done``): rank 0's are written, so only rank 0 needs to evaluate.
        Not collective."""
        done = self._ex.steps_done
        if loss is not None or accuracy is not None:
            if step is not None and step != done + 1:
                raise Error(
                    f"log: training values belong to the step in progress ({done + 1}), "
                    f"not step {step}"
                )
            if loss is None or accuracy is None:
                raise Error("log: give loss and accuracy together")
            self._ex.log_train(float(loss), float(accuracy), int(samples))
        if test_loss is not None or test_accuracy is not None:
            if test_loss is None or test_accuracy is None:
                raise Error("log: give test_loss and test_accuracy together")
            self._ex.log_eval(done if step is None else int(step), float(test_loss),
                              float(test_accuracy))

    def set_attrs(self, **attrs):
        """Root attributes of the metrics file (int, float or str), such as ``model``,
        ``batch_size``, ``lr``: what ``rps report`` groups runs by. After the first step.
        Not collective (rank 0 writes them)."""
        for name, value in attrs.items():
            self._ex.set_attr(name, value)

    def close(self, completed=True):
        """Writes the last rows and closes the metrics file (status ``completed``).
        Collective. An exchange still open at exit is closed then."""
        self._ex.close(completed)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        agreed = value is None or (isinstance(value, Error) and getattr(value, "agreed", False))
        if agreed:
            self.close(completed=value is None)
        return False

    rank = property(lambda self: self._ex.rank, doc="This rank.")
    size = property(lambda self: self._ex.size, doc="Ranks in the job.")
    is_worker = property(lambda self: self._ex.is_worker,
                         doc="Whether this rank trains a replica (every rank when co-located).")
    worker_index = property(lambda self: self._ex.worker_index,
                            doc="This rank's index among the workers (for its data shard), or None.")
    workers = property(lambda self: self._ex.workers, doc="Workers in the job.")
    steps_done = property(lambda self: self._ex.steps_done, doc="Steps exchanged so far.")
    metrics = property(lambda self: self._ex.metrics, doc="The metrics file's path, or None.")
    closed = property(lambda self: self._ex.closed)
    drop_description = property(lambda self: self._ex.drop_description,
                                doc="What the drop model does (from the first step on).")


def local_exchanges(n, **options):
    """``n`` in-process ranks (threads of this process, no MPI), one :class:`Exchange`
    each, for tests: step each from its own thread. Same options as :class:`Exchange`."""
    group = [Exchange._wrap(e) for e in _rps.local_exchanges(int(n), _flags(options),
                                                              _command_line())]
    _local_groups.append(weakref.WeakSet(group))
    return group


# Groups of in-process ranks: each closes together, one thread per rank.
_local_groups = []


_previous_excepthook = sys.excepthook


def _excepthook(kind, value, tb):
    global _agreed_failure
    _previous_excepthook(kind, value, tb)
    if isinstance(value, Error) and getattr(value, "agreed", False):
        # Every rank raised it and exits the same way: finish together.
        _agreed_failure = True
        return
    if _rps.mpi_size() > 1:
        # Only this rank failed: the others would wait for it forever.
        sys.stderr.write("rps: an error on this rank only; aborting the MPI job\n")
        sys.stderr.flush()
        _rps.abort(1)


sys.excepthook = _excepthook


@atexit.register
def _at_exit():
    for key in sorted(_open.keys()):
        ex = _open.get(key)
        if ex is not None and not ex.closed:
            try:
                ex.close(completed=not _agreed_failure)
            except Error as e:  # the file could not be written: say so, finish anyway
                sys.stderr.write(f"rps: closing the exchange at exit: {e}\n")
    for group in _local_groups:
        live = [ex for ex in group if not ex.closed]
        if live:
            threads = [threading.Thread(target=ex.close, args=(not _agreed_failure,))
                       for ex in live]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    _rps.finalize()
