//! What one rank counts in one step, declared once: [`StepCounters`]. Summed over ranks
//! at every flush and over steps for the run's totals and checkpoints. A leaf: the
//! exchange, the transports and checkpoints count without knowing the metrics file;
//! `metrics::schema` derives the HDF5 columns from these counters.

/// Declares the per-step counters once: the struct, its sum, and its flat form for
/// reductions and checkpoints (in declaration order, named by [`StepCounters::NAMES`]).
macro_rules! step_counters {
    ($( $(#[doc = $doc:literal])+ $name:ident : $ty:ty, )+) => {
        /// What one rank counts during one step. Summed over ranks (reliable reduction)
        /// and over steps; every field is a sum, so any split of the work adds up.
        #[derive(Debug, Clone, Copy, Default, PartialEq)]
        pub struct StepCounters {
            $( $(#[doc = $doc])+ pub $name: $ty, )+
        }

        impl StepCounters {
            /// Field names, in the order of [`StepCounters::to_flat`].
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name)),+];
            /// Number of fields.
            pub const LEN: usize = Self::NAMES.len();

            /// Adds every field of `o` to this one.
            pub fn add(&mut self, o: &StepCounters) {
                $( self.$name += o.$name; )+
            }

            /// Appends every field, as f64 (exact for counts below 2^53), to `out`.
            pub fn to_flat(&self, out: &mut Vec<f64>) {
                $( out.push(self.$name as f64); )+
            }

            /// The inverse of [`StepCounters::to_flat`].
            ///
            /// # Panics
            /// If `flat` does not hold exactly [`StepCounters::LEN`] values.
            pub fn from_flat(flat: &[f64]) -> StepCounters {
                assert_eq!(flat.len(), Self::LEN, "flat step counters");
                let mut values = flat.iter();
                let mut next = || values.next().copied().unwrap_or_default();
                StepCounters { $( $name: next() as $ty, )+ }
            }
        }
    };
}

step_counters! {
    /// Sum of the training losses of this worker's minibatch samples.
    loss_sum: f64,
    /// Minibatch samples classified correctly.
    correct: u64,
    /// Minibatch samples.
    count: u64,
    /// Uplink messages posted (at least one packet survived the drop model).
    sent_up: u64,
    /// Uplink messages the drop model discarded entirely (never posted).
    dropped_up: u64,
    /// Downlink messages posted.
    sent_down: u64,
    /// Downlink messages the drop model discarded entirely.
    dropped_down: u64,
    /// Uplink packets attempted (equal to messages without `--packet-bytes`).
    packets_up: u64,
    /// Uplink packets the drop model discarded.
    packets_dropped_up: u64,
    /// Downlink packets attempted.
    packets_down: u64,
    /// Downlink packets the drop model discarded.
    packets_dropped_down: u64,
    /// Payload bytes of the packets that were not dropped.
    bytes_sent: u64,
    /// Uplink messages received in time, counted by the receiver.
    received_up: u64,
    /// Downlink messages received in time, counted by the receiver.
    received_down: u64,
    /// Packets of uplink messages that arrived in time, counted by the receiver.
    packets_received_up: u64,
    /// Packets of downlink messages that arrived in time, counted by the receiver.
    packets_received_down: u64,
    /// Messages (datagrams) that arrived after their deadline and were discarded.
    late: u64,
    /// Messages or datagrams refused as foreign or malformed.
    rejected: u64,
    /// Datagrams lost on this host, not on the network: refused by the local stack when
    /// sent, or dropped by the kernel because the socket's receive buffer was full.
    host_losses: u64,
    /// Seconds in the local step (data, forward, backward, update).
    compute_s: f64,
    /// Seconds in the exchange.
    comm_s: f64,
    /// Seconds since training started, at the end of the step (rank 0 only).
    wall_s: f64,
}

impl StepCounters {
    /// Packets (messages without `--packet-bytes`) the drop model discarded, both ways.
    pub fn packets_dropped(&self) -> u64 {
        self.packets_dropped_up + self.packets_dropped_down
    }

    /// Packets (messages without `--packet-bytes`) attempted, both ways.
    pub fn packets_attempted(&self) -> u64 {
        self.packets_up + self.packets_down
    }
}
