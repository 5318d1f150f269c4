//! Which vector instructions the engine's kernels run on: the widest the CPU has, found
//! once per process, optionally capped by the environment variable `RPS_KERNELS`.
//!
//! A choice of speed only, never of results: every kernel of the engine (the matrix
//! product, the Winograd transforms) performs the same IEEE operations, fused
//! multiply-adds included, in the same order whatever the vector width, so a run is
//! bit-identical on a CPU with AVX-512, one with only AVX2 and FMA, and one with neither
//! (where the portable kernels call a correctly rounded software `fmaf`: slow, not
//! different). `RPS_KERNELS=portable` (or `avx2`) forces the narrower kernels, which is
//! how the test suite checks that claim on one machine.

use std::sync::OnceLock;

/// An instruction set the kernels are compiled for, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust with `f32::mul_add`; what other architectures (aarch64) run.
    Portable,
    /// x86-64 with AVX2 and FMA: 8 floats per vector.
    Avx2,
    /// x86-64 with AVX-512F (and AVX2, FMA): 16 floats per vector.
    Avx512,
}

/// The environment variable that caps the instruction set.
pub const ENV: &str = "RPS_KERNELS";

impl Isa {
    /// Every instruction set, narrowest first.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    /// The name `RPS_KERNELS` takes and metrics files record.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The widest instruction set this CPU supports.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 =
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            if avx2 && std::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Whether this CPU can run kernels compiled for `self`.
    pub fn supported(self) -> bool {
        self <= Isa::detected()
    }
}

/// The instruction set named by `value` (`RPS_KERNELS`'s syntax: `portable`, `avx2`,
/// `avx512` or `auto`), capped at what the CPU has.
///
/// # Errors
/// An unknown name, as a sentence naming the variable and the accepted values.
pub fn parse(value: &str) -> Result<Isa, String> {
    let detected = Isa::detected();
    match value.trim() {
        "" | "auto" => Ok(detected),
        v => Isa::ALL
            .into_iter()
            .find(|i| i.name() == v)
            .map(|i| i.min(detected))
            .ok_or_else(|| {
                format!(
                    "{ENV}={v}: unknown instruction set (expected auto, portable, avx2 or avx512)"
                )
            }),
    }
}

/// The instruction set the engine's kernels use in this process: `RPS_KERNELS` if set
/// (capped at what the CPU has; an unknown value is ignored here, and refused by
/// [`check_env`], which the `rps` binary calls at start-up), else the CPU's widest.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        std::env::var(ENV)
            .ok()
            .and_then(|v| parse(&v).ok())
            .unwrap_or_else(Isa::detected)
    })
}

/// Checks `RPS_KERNELS`, so a typo is an error rather than silently the default.
///
/// # Errors
/// An unknown value, as a sentence naming the variable.
pub fn check_env() -> Result<(), String> {
    match std::env::var(ENV) {
        Ok(v) => parse(&v).map(|_| ()),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_capped_at_the_cpu() {
        for i in Isa::ALL {
            assert_eq!(parse(i.name()), Ok(i.min(Isa::detected())));
        }
        assert_eq!(parse("auto"), Ok(Isa::detected()));
        assert!(parse("sse9").unwrap_err().contains("RPS_KERNELS=sse9"));
        assert!(Isa::Portable.supported());
    }
}
