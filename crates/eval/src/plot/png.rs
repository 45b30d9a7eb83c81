//! SVG → PNG with resvg, text set in the system's fonts (DejaVu Sans where installed).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use resvg::tiny_skia::{Pixmap, Transform};
use resvg::usvg::{fontdb, Options, Tree};

use super::plot_err;
use crate::{Error, Result};

/// Pixels per SVG unit in the PNG (2: sharp when printed at the SVG's size).
const SCALE: f32 = 2.0;

/// The system fonts, loaded once; generic `sans-serif` maps to DejaVu Sans when present, else
/// to the first installed family. Without fonts, text is left out of the PNG.
fn fonts() -> Arc<fontdb::Database> {
    static FONTS: OnceLock<Arc<fontdb::Database>> = OnceLock::new();
    FONTS
        .get_or_init(|| {
            let mut db = fontdb::Database::new();
            db.load_system_fonts();
            let families: Vec<String> = db
                .faces()
                .flat_map(|f| f.families.iter().map(|(name, _)| name.clone()))
                .collect();
            let sans = families
                .iter()
                .find(|f| f.as_str() == "DejaVu Sans")
                .or_else(|| families.first());
            if let Some(family) = sans {
                db.set_sans_serif_family(family.clone());
            }
            Arc::new(db)
        })
        .clone()
}

/// Renders `svg` (white background) and writes it to `path` as PNG.
pub(super) fn write_png(svg: &str, path: &Path) -> Result<()> {
    let options = Options {
        fontdb: fonts(),
        ..Options::default()
    };
    let tree = Tree::from_str(svg, &options).map_err(plot_err)?;
    let size = tree
        .size()
        .to_int_size()
        .scale_by(SCALE)
        .ok_or_else(|| Error::Plot(format!("cannot scale a {:?} figure", tree.size())))?;
    let mut pixmap = Pixmap::new(size.width(), size.height())
        .ok_or_else(|| Error::Plot(format!("empty figure for {}", path.display())))?;
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        Transform::from_scale(SCALE, SCALE),
        &mut pixmap.as_mut(),
    );
    pixmap
        .save_png(path)
        .map_err(|e| Error::Plot(format!("{}: {e}", path.display())))
}
