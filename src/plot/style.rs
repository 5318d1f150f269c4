//! How every figure of rps looks, written once: the font (read from the system at run
//! time), the palette, the legend, the size, and the `both!` macro that draws one figure
//! as PNG and SVG. A leaf: the metrics, claim, netsim, testbed and bench-exchange figures
//! all draw with it.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// Where the font may be; the first is Debian's fonts-dejavu-core.
const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers DejaVu Sans as plotters' "sans-serif" once per process.
pub(crate) fn register_font() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = FONT_PATHS
            .iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| {
                format!(
                    "no DejaVu Sans font found (looked at {}); install fonts-dejavu-core",
                    FONT_PATHS.join(", ")
                )
            })?;
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        // plotters keeps fonts for the life of the process; this runs once.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is not a usable TrueType font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// The size of a one-panel figure, in pixels.
pub(crate) const SIZE: (u32, u32) = (1000, 640);

/// Draws `$f(&root, args...)` on white into `$dir/$name.png` and `$dir/$name.svg`;
/// evaluates to the two paths.
macro_rules! both {
    ($dir:expr, $name:expr, $size:expr, $f:ident ( $($arg:expr),* )) => {{
        let png = $dir.join(format!("{}.png", $name));
        let svg = $dir.join(format!("{}.svg", $name));
        {
            let root = BitMapBackend::new(&png, $size).into_drawing_area();
            root.fill(&WHITE).with_context(|| format!("drawing {}", png.display()))?;
            $f(&root, $($arg),*).with_context(|| format!("drawing {}", png.display()))?;
            root.present().with_context(|| format!("writing {}", png.display()))?;
        }
        {
            let root = SVGBackend::new(&svg, $size).into_drawing_area();
            root.fill(&WHITE).with_context(|| format!("drawing {}", svg.display()))?;
            $f(&root, $($arg),*).with_context(|| format!("drawing {}", svg.display()))?;
            root.present().with_context(|| format!("writing {}", svg.display()))?;
        }
        [png, svg]
    }};
}
pub(crate) use both;

/// Matplotlib's "tab10" colours: distinct, and readable on white.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The `i`-th colour of the palette (cycling).
pub(crate) fn pick(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// The legend of a chart, drawn the same way in every figure.
pub(crate) fn legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(font(15))
        .position(position)
        .draw()?;
    Ok(())
}

/// The sans-serif font at `size` points.
pub(crate) fn font(size: u32) -> TextStyle<'static> {
    ("sans-serif", size).into_font().into()
}
