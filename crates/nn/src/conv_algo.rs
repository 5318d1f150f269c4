//! Which algorithm a convolution layer runs: im2col + matrix product, or a Winograd tile.
//! The choice is a fixed function of the layer's geometry (no timing at run time), so
//! every rank of a run, under mpirun or in one process, computes bit-identical results.
//! `RPS_CONV` overrides it for measurements; it is read once per process.

use std::sync::OnceLock;

use crate::NnError;

/// The algorithm of one convolution layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvAlgo {
    /// im2col + one matrix product per group of samples (any stride).
    Im2col,
    /// Winograd with this tile (stride 1, the tile's kernel size).
    Winograd(Tile),
}

/// What `RPS_CONV` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Override {
    /// `auto` or unset: the rule of [`ConvAlgo::auto`].
    Auto,
    /// `im2col`: im2col everywhere.
    Im2col,
    /// `winograd`: Winograd wherever a tile fits, the tile `auto` would take or else the
    /// smallest; `winograd2` / `winograd4` force that output tile side.
    Winograd(Option<usize>),
}

/// Parses `RPS_CONV` (`im2col`, `winograd`, `winograd2`, `winograd4`, `auto`; unset is auto).
fn parse(value: Option<&str>) -> Result<Override, String> {
    match value.map(str::trim) {
        None | Some("") | Some("auto") => Ok(Override::Auto),
        Some("im2col") => Ok(Override::Im2col),
        Some("winograd") => Ok(Override::Winograd(None)),
        Some("winograd2") => Ok(Override::Winograd(Some(2))),
        Some("winograd4") => Ok(Override::Winograd(Some(4))),
        Some(other) => Err(format!(
            "RPS_CONV={other:?}: expected im2col, winograd, winograd2, winograd4 or auto"
        )),
    }
}

/// The process's `RPS_CONV`, read on first use.
fn env_override() -> Result<Override, NnError> {
    static ENV: OnceLock<Result<Override, String>> = OnceLock::new();
    ENV.get_or_init(|| parse(std::env::var("RPS_CONV").ok().as_deref()))
        .clone()
        .map_err(NnError::Config)
}

/// Checks `RPS_CONV` on its own, so an application can reject a bad value with a message
/// about it before building a model.
///
/// # Errors
/// [`NnError::Config`] naming the value and the accepted ones.
pub fn check_env() -> Result<(), NnError> {
    env_override().map(|_| ())
}

impl ConvAlgo {
    /// The algorithm for a layer: the `RPS_CONV` override if set, else [`ConvAlgo::auto`].
    ///
    /// # Errors
    /// [`NnError::Config`] if `RPS_CONV` holds something else than the values above.
    pub fn select(
        kernel: usize,
        stride: usize,
        (c, f): (usize, usize),
        (ho, wo): (usize, usize),
    ) -> Result<ConvAlgo, NnError> {
        // The first tile that fits, with output side m if one is asked for.
        let fitting = |m: Option<usize>| {
            Tile::ALL
                .into_iter()
                .find(|t| stride == 1 && t.r() == kernel && m.is_none_or(|m| t.m() == m))
        };
        Ok(match env_override()? {
            Override::Auto => ConvAlgo::auto(kernel, stride, (c, f), (ho, wo)),
            Override::Im2col => ConvAlgo::Im2col,
            Override::Winograd(m) => match ConvAlgo::auto(kernel, stride, (c, f), (ho, wo)) {
                ConvAlgo::Winograd(t) if m.is_none_or(|m| t.m() == m) => ConvAlgo::Winograd(t),
                _ => fitting(m).map_or(ConvAlgo::Im2col, ConvAlgo::Winograd),
            },
        })
    }

    /// The fixed rule, from per-layer timings on one core (`docs/results/winograd.md`,
    /// `winograd::tests::time_layers`): Winograd for stride-1 3×3 and 5×5 layers with at
    /// least 16 input channels; im2col for strided layers and for layers with few input
    /// channels (CNN conv1, ResNet stem), whose products have too short an inner dimension
    /// for the α² transform-domain products to pay for their transforms. Forward + dW + dX
    /// at batch 32, thread CPU time, 2026-11-30:
    ///
    /// | layer (C→F, kernel, output) | im2col | F(2×2) | F(4×4) | rule |
    /// |---|---|---|---|---|
    /// | CNN conv1 (1→32, 5×5, 28²), fwd + dW | 1.9 ms | 7.7 ms | 5.2 ms | im2col |
    /// | CNN conv2 (32→64, 5×5, 14²) | 27.1 ms | 16.7 ms | 13.5 ms | F(4,5) |
    /// | ResNet stem (3→16, 3×3, 32²), fwd + dW | 1.5 ms | 3.3 ms | 2.6 ms | im2col |
    /// | ResNet 16→16, 3×3, 32² | 10.5 ms | 9.3 ms | 7.1 ms | F(4,3) |
    /// | ResNet 32→32, 3×3, 16² | 7.3 ms | 6.0 ms | 4.5 ms | F(4,3) |
    /// | ResNet 64→64, 3×3, 8² | 6.5 ms | 4.5 ms | 3.9 ms | F(4,3) |
    pub fn auto(
        kernel: usize,
        stride: usize,
        (c, _f): (usize, usize),
        _out: (usize, usize),
    ) -> ConvAlgo {
        match (stride, kernel) {
            (1, 3) if c >= 16 => ConvAlgo::Winograd(Tile::F4x3),
            (1, 5) if c >= 16 => ConvAlgo::Winograd(Tile::F4x5),
            _ => ConvAlgo::Im2col,
        }
    }
}

/// A Winograd tile: m×m outputs per tile for an r×r kernel, from α = m + r − 1 inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tile {
    /// F(2×2, 3×3): α = 4, 2.25× fewer multiplications than direct.
    F2x3,
    /// F(4×4, 3×3): α = 6, 4× fewer.
    F4x3,
    /// F(2×2, 5×5): α = 6, 2.78× fewer.
    F2x5,
    /// F(4×4, 5×5): α = 8, 6.25× fewer; fp32 error grows with α (see the tests).
    F4x5,
}

impl Tile {
    /// Every tile the engine knows, for tests and measurements.
    pub const ALL: [Tile; 4] = [Tile::F2x3, Tile::F4x3, Tile::F2x5, Tile::F4x5];

    /// Output tile side m.
    pub fn m(self) -> usize {
        match self {
            Tile::F2x3 | Tile::F2x5 => 2,
            Tile::F4x3 | Tile::F4x5 => 4,
        }
    }

    /// Kernel side r.
    pub fn r(self) -> usize {
        match self {
            Tile::F2x3 | Tile::F4x3 => 3,
            Tile::F2x5 | Tile::F4x5 => 5,
        }
    }

    /// Input tile side α = m + r − 1.
    pub fn alpha(self) -> usize {
        self.m() + self.r() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_values_and_rejects_others() {
        assert_eq!(parse(None), Ok(Override::Auto));
        assert_eq!(parse(Some("auto")), Ok(Override::Auto));
        assert_eq!(parse(Some("im2col")), Ok(Override::Im2col));
        assert_eq!(parse(Some("winograd")), Ok(Override::Winograd(None)));
        assert_eq!(parse(Some("winograd4")), Ok(Override::Winograd(Some(4))));
        let err = parse(Some("fft")).expect_err("unknown value");
        assert!(err.contains("RPS_CONV=\"fft\""), "{err}");
    }

    #[test]
    fn auto_keeps_im2col_for_strided_and_thin_layers() {
        assert_eq!(ConvAlgo::auto(3, 2, (16, 32), (16, 16)), ConvAlgo::Im2col);
        assert_eq!(ConvAlgo::auto(5, 1, (1, 32), (28, 28)), ConvAlgo::Im2col);
        assert_eq!(ConvAlgo::auto(1, 1, (64, 64), (8, 8)), ConvAlgo::Im2col);
    }
}
