//! `rps._rps`: the native half of the `rps` Python package (`python/rps` is the other).
//!
//! Everything the exchange does is [`rps::session`]; this crate only carries buffers,
//! flags and errors across: a buffer is the Python object's own memory (the buffer
//! protocol, no copy), held while the exchange runs with the interpreter lock released.
//!
//! MPI can be started once per process and must be finalised before it exits: the
//! first MPI exchange starts it and keeps it in `WORLD`; `finalize` (called at exit by
//! the package, after it has closed every exchange) ends it. MPI is started without
//! thread support, so an MPI exchange answers only on the thread that started MPI.

use std::sync::Mutex;
use std::thread::ThreadId;

use pyo3::buffer::PyBuffer;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use rps::comm::local::LocalTransport;
use rps::comm::mpi::MpiTransport;
use rps::comm::udp::UdpTransport;
use rps::comm::{agree, Transport};
use rps::config::TransportKind;
use rps::counters::StepCounters;
use rps::metrics::attrs::AttrValue;
use rps::session::{self, Session, SessionError};

create_exception!(
    rps,
    Error,
    PyException,
    "An error of the exchange. `agreed` is True where every rank raised it (a bad input anywhere), False where only this rank knows (the job cannot go on)."
);

/// The process's MPI environment, once started.
struct World {
    /// Boxed so that its address, lent to sessions as `&'static`, never moves.
    mpi: Box<MpiTransport>,
    thread: ThreadId,
    /// Sessions open on it: MPI is finalised only when none is.
    open: usize,
}

// SAFETY: the transport is used only on `thread` (every entry point checks), and the
// mutex orders the bookkeeping.
unsafe impl Send for World {}

static WORLD: Mutex<Option<World>> = Mutex::new(None);

fn py_error(py: Python<'_>, e: SessionError) -> PyErr {
    let err = Error::new_err(e.message);
    // Setting an attribute on a fresh exception instance cannot fail in practice; if it
    // did, the exception still carries the message.
    let _ = err.value(py).setattr("agreed", e.agreed);
    err
}

fn local_error(py: Python<'_>, message: impl Into<String>) -> PyErr {
    py_error(
        py,
        SessionError {
            message: message.into(),
            agreed: false,
        },
    )
}

/// The MPI transport, started on first use; `'static` because the box lives until
/// `finalize`, which refuses while a session is open.
fn mpi_world(py: Python<'_>) -> PyResult<&'static MpiTransport> {
    let mut world = WORLD.lock().unwrap_or_else(|p| p.into_inner());
    if world.is_none() {
        let Some(mpi) = MpiTransport::init() else {
            return Err(local_error(
                py,
                "MPI was started by another library in this process (mpi4py?): rps starts MPI itself; import rps before it, or do not use both",
            ));
        };
        *world = Some(World {
            mpi: Box::new(mpi),
            thread: std::thread::current().id(),
            open: 0,
        });
    }
    let w = world.as_mut().expect("started above");
    if w.thread != std::thread::current().id() {
        return Err(local_error(
            py,
            "MPI was started on another thread: an MPI exchange is used from the thread that created the first one",
        ));
    }
    w.open += 1;
    let ptr: *const MpiTransport = &*w.mpi;
    // SAFETY: the box is dropped only by `finalize`, and only when `open` is 0.
    Ok(unsafe { &*ptr })
}

fn release_world() {
    let mut world = WORLD.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(w) = world.as_mut() {
        w.open = w.open.saturating_sub(1);
    }
}

/// One rank's open session and where it may be used.
struct Inner {
    session: Session<'static>,
    /// MPI sessions: the thread that started MPI.
    thread: Option<ThreadId>,
}

// SAFETY: an in-process session's transport is channels, made to move between threads;
// an MPI or UDP session is used only on `thread` (checked at every call).
unsafe impl Send for Inner {}

/// A buffer's memory, lent to the exchange while the interpreter lock is released.
struct Lent {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: the Python buffer it points into is held (and so kept alive and unmoved) by
// the caller for the whole call.
unsafe impl Send for Lent {}

/// One rank's RPS exchange (the Python class `rps.Exchange` wraps it).
#[pyclass(module = "rps._rps")]
struct Exchange {
    inner: Mutex<Option<Inner>>,
    mpi: bool,
}

impl Exchange {
    /// Runs `f` on the open session, on the right thread.
    fn with<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Session<'static>) -> PyResult<R>,
    ) -> PyResult<R> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(inner) = guard.as_mut() else {
            return Err(py_error(
                py,
                SessionError {
                    message: "the exchange is closed".into(),
                    agreed: true,
                },
            ));
        };
        if inner
            .thread
            .is_some_and(|t| t != std::thread::current().id())
        {
            return Err(local_error(
                py,
                "an MPI exchange is used from the thread that created it",
            ));
        }
        f(&mut inner.session)
    }
}

impl Exchange {
    /// Runs a collective call `f` of the session on `buffer`'s memory (or, with `why`,
    /// on that reason this rank has no usable buffer), with the interpreter lock released.
    fn on_buffer<R>(
        &self,
        py: Python<'_>,
        buffer: Option<&Bound<'_, PyAny>>,
        why: Option<String>,
        f: impl FnOnce(&mut Session<'static>, Result<&mut [f32], String>) -> Result<R, SessionError>,
    ) -> PyResult<R> {
        let lent = match why {
            Some(w) => Err(w),
            None => lend(buffer),
        };
        self.with(py, |s| {
            let (holder, result) = match lent {
                Ok((holder, lent)) => (Some(holder), Ok(lent)),
                Err(w) => (None, Err(w)),
            };
            let out = unlocked(py, || {
                let buffer = result.map(|l| {
                    // SAFETY: `holder` keeps the exporter's memory alive and in place
                    // until after this call; the exchange is its only user meanwhile.
                    unsafe { std::slice::from_raw_parts_mut(l.ptr, l.len) }
                });
                f(s, buffer)
            });
            drop(holder);
            out.map_err(|e| py_error(py, e))
        })
    }
}

impl Drop for Exchange {
    /// An exchange collected without `close` (its metrics file keeps status `running`)
    /// no longer holds MPI open, so that MPI is still finalised at exit.
    fn drop(&mut self) {
        let open = self.inner.get_mut().map_or(true, |inner| inner.is_some());
        if self.mpi && open {
            release_world();
        }
    }
}

/// The buffer as `f32` memory, or why it is not usable.
fn lend(obj: Option<&Bound<'_, PyAny>>) -> Result<(PyBuffer<f32>, Lent), String> {
    let Some(obj) = obj else {
        return Err("no buffer".into());
    };
    let buf =
        PyBuffer::<f32>::get(obj).map_err(|e| format!("the buffer is not float32 memory: {e}"))?;
    if buf.readonly() {
        return Err(
            "the buffer is read-only: the exchange writes the averaged model into it".into(),
        );
    }
    if !buf.is_c_contiguous() {
        return Err("the buffer is not contiguous: pass one contiguous float32 array".into());
    }
    let lent = Lent {
        ptr: buf.buf_ptr().cast::<f32>(),
        len: buf.item_count(),
    };
    Ok((buf, lent))
}

/// A value that crosses a `Send` bound without being sent anywhere else than where it
/// was made (see [`unlocked`]) or whose transport is made to move (in-process ranks).
struct Here<T>(T);

// SAFETY: used only as described above.
unsafe impl<T> Send for Here<T> {}

impl<T> Here<T> {
    fn into_inner(self) -> T {
        self.0
    }
}

/// Runs `f` with the interpreter lock released. `detach` asks for a `Send` closure
/// because the lock is given up meanwhile, not because the closure moves: it runs here,
/// on this thread, which is what an MPI session needs.
fn unlocked<R>(py: Python<'_>, f: impl FnOnce() -> R) -> R {
    let f = Here(f);
    py.detach(move || Here(f.into_inner()())).into_inner()
}

fn counters_dict<'py>(py: Python<'py>, c: &StepCounters) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let mut flat = Vec::with_capacity(StepCounters::LEN);
    c.to_flat(&mut flat);
    for (name, v) in StepCounters::NAMES.iter().zip(flat) {
        if name.ends_with("_s") || *name == "loss_sum" {
            d.set_item(name, v)?;
        } else {
            d.set_item(name, v as u64)?;
        }
    }
    Ok(d)
}

#[pymethods]
impl Exchange {
    /// Opens an exchange over MPI (or UDP, with `--transport udp`): collective over the
    /// job's ranks. `flags` are `rps train` flags of the exchange.
    #[new]
    #[pyo3(signature = (flags, command_line, frontend = "python"))]
    fn new(
        py: Python<'_>,
        flags: Vec<String>,
        command_line: String,
        frontend: &str,
    ) -> PyResult<Self> {
        let mpi = mpi_world(py)?;
        let opened = (|| {
            let cfg = agree(mpi, session::config(&flags, mpi.size(), command_line))?;
            let net: Box<dyn Transport> = match cfg.train.transport {
                TransportKind::Mpi => Box::new(mpi),
                TransportKind::Udp(opts) => Box::new(UdpTransport::connect(mpi, &opts)?),
            };
            Session::open(net, cfg, frontend)
        })();
        match opened {
            Ok(session) => Ok(Exchange {
                inner: Mutex::new(Some(Inner {
                    session,
                    thread: Some(std::thread::current().id()),
                })),
                mpi: true,
            }),
            Err(e) => {
                release_world();
                Err(py_error(py, e))
            }
        }
    }

    /// One step on `buffer` (or, with `buffer` None, the step fails on every rank with
    /// `why`). Returns this rank's counters. Collective.
    #[pyo3(signature = (buffer, why = None))]
    fn step<'py>(
        &self,
        py: Python<'py>,
        buffer: Option<&Bound<'py, PyAny>>,
        why: Option<String>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let counts = self.on_buffer(py, buffer, why, |s, b| s.step(b))?;
        counters_dict(py, &counts)
    }

    /// Replaces `buffer` with the mean of the workers' buffers (reliable, in rank order;
    /// for evaluating the averaged model). Collective.
    #[pyo3(signature = (buffer, why = None))]
    fn average(
        &self,
        py: Python<'_>,
        buffer: Option<&Bound<'_, PyAny>>,
        why: Option<String>,
    ) -> PyResult<()> {
        self.on_buffer(py, buffer, why, |s, b| s.average(b))
    }

    /// Waits for every rank. Collective.
    fn barrier(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |s| {
            unlocked(py, || s.barrier());
            Ok(())
        })
    }

    /// Every rank's `value`, in rank order. Collective.
    fn gather(&self, py: Python<'_>, value: f64) -> PyResult<Vec<f64>> {
        self.with(py, |s| Ok(unlocked(py, || s.gather(value))))
    }

    /// This rank's training values for the step in progress. Local.
    fn log_train(&self, py: Python<'_>, loss: f64, accuracy: f64, samples: u64) -> PyResult<()> {
        self.with(py, |s| {
            s.log_train(loss, accuracy, samples)
                .map_err(|e| py_error(py, e))
        })
    }

    /// An evaluation after `step` steps (rank 0's is written). Local.
    fn log_eval(
        &self,
        py: Python<'_>,
        step: u64,
        test_loss: f64,
        test_accuracy: f64,
    ) -> PyResult<()> {
        self.with(py, |s| {
            s.log_eval(step, test_loss, test_accuracy)
                .map_err(|e| py_error(py, e))
        })
    }

    /// A root attribute of the metrics file (int, float or str). Local.
    fn set_attr(&self, py: Python<'_>, name: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let v = if let Ok(b) = value.extract::<bool>() {
            AttrValue::from(b)
        } else if let Ok(i) = value.extract::<i64>() {
            AttrValue::Int(i)
        } else if let Ok(f) = value.extract::<f64>() {
            AttrValue::Float(f)
        } else if let Ok(s) = value.extract::<String>() {
            AttrValue::Str(s)
        } else {
            return Err(local_error(
                py,
                format!("attribute {name:?}: a value must be an int, a float or a str"),
            ));
        };
        self.with(py, |s| s.set_attr(name, v).map_err(|e| py_error(py, e)))
    }

    /// Writes the last rows and closes the metrics file (status `completed`, or left
    /// `running` with `completed=False`). Collective; a closed exchange stays closed.
    #[pyo3(signature = (completed = true))]
    fn close(&self, py: Python<'_>, completed: bool) -> PyResult<()> {
        let taken = {
            let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if guard
                .as_ref()
                .is_some_and(|i| i.thread.is_some_and(|t| t != std::thread::current().id()))
            {
                return Err(local_error(
                    py,
                    "an MPI exchange is used from the thread that created it",
                ));
            }
            guard.take()
        };
        let Some(mut inner) = taken else {
            return Ok(());
        };
        let out = unlocked(py, || inner.session.close(completed));
        drop(inner);
        if self.mpi {
            release_world();
        }
        out.map_err(|e| py_error(py, e))
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    #[getter]
    fn rank(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |s| Ok(s.rank()))
    }

    #[getter]
    fn size(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |s| Ok(s.size()))
    }

    #[getter]
    fn is_worker(&self, py: Python<'_>) -> PyResult<bool> {
        self.with(py, |s| Ok(s.is_worker()))
    }

    #[getter]
    fn worker_index(&self, py: Python<'_>) -> PyResult<Option<usize>> {
        self.with(py, |s| Ok(s.worker_index()))
    }

    #[getter]
    fn workers(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |s| Ok(s.num_workers()))
    }

    #[getter]
    fn steps_done(&self, py: Python<'_>) -> PyResult<u64> {
        self.with(py, |s| Ok(s.steps_done()))
    }

    #[getter]
    fn metrics(&self, py: Python<'_>) -> PyResult<Option<String>> {
        self.with(py, |s| {
            Ok(s.metrics_path().map(|p| p.display().to_string()))
        })
    }

    #[getter]
    fn drop_description(&self, py: Python<'_>) -> PyResult<Option<String>> {
        self.with(py, |s| Ok(s.drop_description()))
    }
}

/// `n` in-process ranks, as threads of this process (for tests): one exchange per rank,
/// each to be stepped from its own Python thread.
#[pyfunction]
#[pyo3(signature = (n, flags, command_line, frontend = "python"))]
fn local_exchanges(
    py: Python<'_>,
    n: usize,
    flags: Vec<String>,
    command_line: String,
    frontend: &str,
) -> PyResult<Vec<Exchange>> {
    if n == 0 {
        return Err(local_error(py, "local_exchanges: n must be at least 1"));
    }
    let cfg = session::config(&flags, n, command_line).map_err(|e| {
        py_error(
            py,
            SessionError {
                message: format!("{e:#}"),
                agreed: true,
            },
        )
    })?;
    if matches!(cfg.train.transport, TransportKind::Udp(_)) {
        return Err(local_error(
            py,
            "local_exchanges runs on the in-process network; --transport udp needs mpirun",
        ));
    }
    let opened: Vec<Result<Session<'static>, SessionError>> = unlocked(py, || {
        std::thread::scope(|s| {
            let handles: Vec<_> = LocalTransport::network(n)
                .into_iter()
                .map(|net| {
                    let cfg = cfg.clone();
                    // The in-process transport is channels, made to move between threads.
                    s.spawn(move || Here(Session::open(Box::new(net), cfg, frontend)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(opened) => opened.into_inner(),
                    Err(_) => Err(SessionError {
                        message: "a rank's thread panicked while opening".into(),
                        agreed: false,
                    }),
                })
                .collect()
        })
    });
    let mut out = Vec::with_capacity(n);
    for s in opened {
        let session = s.map_err(|e| py_error(py, e))?;
        out.push(Exchange {
            inner: Mutex::new(Some(Inner {
                session,
                thread: None,
            })),
            mpi: false,
        });
    }
    Ok(out)
}

/// Ranks in the MPI job (1 where MPI was not started).
#[pyfunction]
fn mpi_size() -> usize {
    let world = WORLD.lock().unwrap_or_else(|p| p.into_inner());
    world.as_ref().map_or(1, |w| w.mpi.size())
}

/// Finalises MPI if it was started and no exchange is open on it; returns whether it did.
#[pyfunction]
fn finalize() -> bool {
    let mut world = WORLD.lock().unwrap_or_else(|p| p.into_inner());
    match world.as_ref() {
        Some(w) if w.open == 0 && w.thread == std::thread::current().id() => {
            drop(world.take());
            true
        }
        _ => false,
    }
}

/// Kills the whole MPI job at once (`MPI_Abort`), for an error only this rank knows.
#[pyfunction]
fn abort(code: i32) {
    let world = WORLD.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(w) = world.as_ref() {
        w.mpi.abort(code);
    }
}

#[pymodule]
fn _rps(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Exchange>()?;
    m.add_function(wrap_pyfunction!(local_exchanges, m)?)?;
    m.add_function(wrap_pyfunction!(mpi_size, m)?)?;
    m.add_function(wrap_pyfunction!(finalize, m)?)?;
    m.add_function(wrap_pyfunction!(abort, m)?)?;
    m.add("Error", m.py().get_type::<Error>())?;
    m.add("OPTIONS", session::OPTIONS.to_vec())?;
    m.add("FLUSH_EVERY", session::FLUSH_EVERY)?;
    Ok(())
}
