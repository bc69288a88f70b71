//! A grid of attention heatmaps: one per layer (rows) and head (columns), with the tokens along the axes and a
//! colour bar.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;

use super::{bold, font, register_fonts, write_png, Area, Drawn, FRAME_GREY, NOTE_GREY};
use crate::{Error, Result};

/// Tokens longer than this are cut (with an ellipsis) so one long subword cannot widen every panel.
const MAX_LABEL_CHARS: usize = 14;
/// Neither side of the image grows past this many pixels; cells shrink instead.
const MAX_SIDE: u32 = 7000;

/// Pixel geometry of the grid, computed once from the data and the label sizes.
struct GridLayout {
    layers: usize,
    heads: usize,
    /// Target tokens (rows of a heatmap) and source tokens (columns).
    t: usize,
    s: usize,
    cell: i32,
    gap: i32,
    /// Top-left pixel of the heatmap of layer 0, head 0.
    origin: (i32, i32),
    label_size: f64,
    /// Every `stride`-th token is labelled when cells are smaller than the text.
    stride: usize,
}

impl GridLayout {
    fn panel_size(&self) -> (i32, i32) {
        (self.s as i32 * self.cell, self.t as i32 * self.cell)
    }

    /// Top-left pixel of the heatmap of (`layer`, `head`).
    fn panel(&self, layer: usize, head: usize) -> (i32, i32) {
        let (w, h) = self.panel_size();
        (self.origin.0 + head as i32 * (w + self.gap), self.origin.1 + layer as i32 * (h + self.gap))
    }

    /// Bottom-right pixel of the whole grid of heatmaps.
    fn grid_end(&self) -> (i32, i32) {
        let (x, y) = self.panel(self.layers - 1, self.heads - 1);
        let (w, h) = self.panel_size();
        (x + w, y + h)
    }
}

/// Draws one heatmap per (layer, head) of attention `weights` (`[layer][head][target position][source position]`,
/// values in [0, 1]; for self-attention both token lists are the same) into a PNG at `path`: layers as rows,
/// heads as columns, source tokens (keys) along x and target tokens (queries) along y, and a colour bar. Every
/// matrix must be `target_tokens.len()` × `source_tokens.len()`; the error of a ragged grid names the layer and
/// head. Cells shrink for long sentences, and a grid that would not fit in 7000 × 7000 pixels is an error.
pub fn attention_grid(
    weights: &[Vec<Vec<Vec<f32>>>],
    source_tokens: &[String],
    target_tokens: &[String],
    title: &str,
    path: &Path,
) -> Result<()> {
    let heads = check_shapes(weights, source_tokens.len(), target_tokens.len()).map_err(|e| Error::plot(path, e))?;
    // Labels are measured in the embedded font to lay the grid out.
    register_fonts(path)?;
    let sources: Vec<String> = source_tokens.iter().map(|t| short_label(t)).collect();
    let targets: Vec<String> = target_tokens.iter().map(|t| short_label(t)).collect();
    let layout = grid_layout(weights.len(), heads, &sources, &targets).map_err(|e| Error::plot(path, e))?;
    let (end_x, end_y) = layout.grid_end();
    let below = text_extent(&sources, layout.label_size).map_err(|e| Error::plot(path, e))?;
    let size = ((end_x + COLORBAR_WIDTH + 30) as u32, (end_y + below + 40) as u32);
    write_png(path, size, |root| {
        draw_titles(root, &layout, title)?;
        for (l, layer) in weights.iter().enumerate() {
            for (h, matrix) in layer.iter().enumerate() {
                draw_heatmap(root, &layout, layout.panel(l, h), matrix)?;
            }
        }
        draw_token_labels(root, &layout, &sources, &targets)?;
        draw_colorbar(root, &layout)
    })
}

/// Checks that the grid is rectangular and every matrix is T × S; returns the number of heads.
fn check_shapes(weights: &[Vec<Vec<Vec<f32>>>], s: usize, t: usize) -> std::result::Result<usize, String> {
    if weights.is_empty() {
        return Err("no attention weights: the list of layers is empty".into());
    }
    if s == 0 || t == 0 {
        return Err(format!("no tokens to label the heatmaps ({t} target, {s} source)"));
    }
    let heads = weights[0].len();
    for (l, layer) in weights.iter().enumerate() {
        if layer.is_empty() {
            return Err(format!("attention weights: layer {l} has no heads"));
        }
        if layer.len() != heads {
            return Err(format!("attention weights: layer {l} has {} heads, layer 0 has {heads}", layer.len()));
        }
        for (h, matrix) in layer.iter().enumerate() {
            let bad_row = matrix.iter().find(|row| row.len() != s);
            if matrix.len() != t || bad_row.is_some() {
                let cols = bad_row.or(matrix.first()).map_or(0, Vec::len);
                return Err(format!(
                    "attention weights: layer {l} head {h} is {}×{cols} (target × source), expected {t}×{s} for \
                     {t} target and {s} source tokens",
                    matrix.len()
                ));
            }
        }
    }
    Ok(heads)
}

fn short_label(token: &str) -> String {
    if token.chars().count() <= MAX_LABEL_CHARS {
        return token.to_string();
    }
    let head: String = token.chars().take(MAX_LABEL_CHARS - 1).collect();
    format!("{head}…")
}

const TITLE_HEIGHT: i32 = 64;
const HEAD_TITLE_HEIGHT: i32 = 26;
const LAYER_TITLE_WIDTH: i32 = 30;
const COLORBAR_WIDTH: i32 = 90;

fn grid_layout(
    layers: usize,
    heads: usize,
    sources: &[String],
    targets: &[String],
) -> std::result::Result<GridLayout, String> {
    let (t, s) = (targets.len(), sources.len());
    let longest = t.max(s) as i32;
    // ~24 px cells for ten tokens; smaller for long sentences and for grids that would pass MAX_SIDE.
    let cell = (240 / longest).clamp(6, 26);
    let fit_x = (MAX_SIDE as i32 - 400) / (heads * s) as i32;
    let fit_y = (MAX_SIDE as i32 - 400) / (layers * t) as i32;
    if fit_x < 1 || fit_y < 1 {
        return Err(format!(
            "too much to draw: {layers} layers × {heads} heads of {t}×{s} attention would not fit in \
             {MAX_SIDE}×{MAX_SIDE} pixels; plot fewer layers or heads, or a shorter sentence"
        ));
    }
    let cell = cell.min(fit_x).min(fit_y);
    let label_size = (cell as f64 * 0.62).clamp(10.0, 14.0);
    let stride = ((label_size + 2.0) / cell as f64).ceil().max(1.0) as usize;
    let y_labels = text_extent(targets, label_size)?;
    let origin = (12 + LAYER_TITLE_WIDTH + y_labels + 8, TITLE_HEIGHT + HEAD_TITLE_HEIGHT);
    Ok(GridLayout { layers, heads, t, s, cell, gap: 14.max(cell / 2), origin, label_size, stride })
}

/// The widest of `labels` in pixels at `size` (the space a column of labels, or a row of rotated ones, needs).
fn text_extent(labels: &[String], size: f64) -> std::result::Result<i32, String> {
    let style = font(size);
    let mut widest = 0;
    for label in labels {
        let (w, _) = style.font.box_size(label).map_err(|e| format!("measuring label {label:?}: {e:?}"))?;
        widest = widest.max(w as i32);
    }
    Ok(widest)
}

fn draw_titles(root: &Area, layout: &GridLayout, title: &str) -> Drawn {
    let (end_x, _) = layout.grid_end();
    let center = (layout.origin.0 + end_x) / 2;
    let top = bold(22.0).pos(Pos::new(HPos::Center, VPos::Top));
    root.draw_text(title, &top, (center, 12))?;
    let note = "rows: target tokens (queries), columns: source tokens (keys), colour: attention weight";
    let small = font(13.0).color(&NOTE_GREY).pos(Pos::new(HPos::Center, VPos::Top));
    root.draw_text(note, &small, (center, 40))?;
    let (w, h) = layout.panel_size();
    let head_style = bold(14.0).pos(Pos::new(HPos::Center, VPos::Bottom));
    for head in 0..layout.heads {
        let (x, y) = layout.panel(0, head);
        root.draw_text(&format!("head {head}"), &head_style, (x + w / 2, y - 8))?;
    }
    let layer_style = bold(14.0).transform(FontTransform::Rotate270).pos(Pos::new(HPos::Center, VPos::Top));
    for layer in 0..layout.layers {
        let (_, y) = layout.panel(layer, 0);
        root.draw_text(&format!("layer {layer}"), &layer_style, (12, y + h / 2))?;
    }
    Ok(())
}

fn draw_heatmap(root: &Area, layout: &GridLayout, (x0, y0): (i32, i32), matrix: &[Vec<f32>]) -> Drawn {
    let c = layout.cell;
    for (i, row) in matrix.iter().enumerate() {
        for (j, &w) in row.iter().enumerate() {
            let (x, y) = (x0 + j as i32 * c, y0 + i as i32 * c);
            root.draw(&Rectangle::new([(x, y), (x + c, y + c)], weight_color(w).filled()))?;
        }
    }
    let (w, h) = layout.panel_size();
    root.draw(&Rectangle::new([(x0 - 1, y0 - 1), (x0 + w, y0 + h)], FRAME_GREY))?;
    Ok(())
}

/// Target tokens left of the first column of heatmaps, source tokens (rotated) below the last row.
fn draw_token_labels(root: &Area, layout: &GridLayout, sources: &[String], targets: &[String]) -> Drawn {
    let c = layout.cell;
    let y_style = font(layout.label_size).pos(Pos::new(HPos::Right, VPos::Center));
    for layer in 0..layout.layers {
        let (x0, y0) = layout.panel(layer, 0);
        for (i, token) in targets.iter().enumerate().step_by(layout.stride) {
            root.draw_text(token, &y_style, (x0 - 6, y0 + i as i32 * c + c / 2))?;
        }
    }
    // Rotated a quarter turn so each label reads upwards and ends just under its column.
    let x_style = font(layout.label_size).transform(FontTransform::Rotate270).pos(Pos::new(HPos::Right, VPos::Center));
    let (_, bottom) = layout.grid_end();
    for head in 0..layout.heads {
        let (x0, _) = layout.panel(layout.layers - 1, head);
        for (j, token) in sources.iter().enumerate().step_by(layout.stride) {
            root.draw_text(token, &x_style, (x0 + j as i32 * c + c / 2, bottom + 6))?;
        }
    }
    Ok(())
}

/// A vertical scale from 0 (bottom) to 1 (top), as tall as one row of heatmaps but at least 120 px.
fn draw_colorbar(root: &Area, layout: &GridLayout) -> Drawn {
    let (end_x, _) = layout.grid_end();
    let (x0, top) = (end_x + 24, layout.origin.1);
    let height = layout.panel_size().1.max(120);
    for px in 0..height {
        let w = 1.0 - px as f32 / (height - 1) as f32;
        root.draw(&Rectangle::new([(x0, top + px), (x0 + 16, top + px + 1)], weight_color(w).filled()))?;
    }
    root.draw(&Rectangle::new([(x0, top), (x0 + 16, top + height)], FRAME_GREY))?;
    let style = font(12.0).pos(Pos::new(HPos::Left, VPos::Center));
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = top + ((1.0 - tick) * (height - 1) as f64).round() as i32;
        root.draw(&PathElement::new(vec![(x0 + 16, y), (x0 + 20, y)], BLACK))?;
        root.draw_text(&format!("{tick}"), &style, (x0 + 23, y))?;
    }
    Ok(())
}

/// A white → dark blue ramp (the end points of ColorBrewer's "Blues") over [0, 1]: near-zero weights, most of
/// any attention map, stay light. Out-of-range values are clamped; NaN is grey.
fn weight_color(w: f32) -> RGBColor {
    if w.is_nan() {
        return RGBColor(190, 190, 190);
    }
    const STOPS: [(f32, [f32; 3]); 3] =
        [(0.0, [247.0, 251.0, 255.0]), (0.5, [107.0, 174.0, 214.0]), (1.0, [8.0, 48.0, 107.0])];
    let w = w.clamp(0.0, 1.0);
    let (lo, hi) = if w <= STOPS[1].0 { (STOPS[0], STOPS[1]) } else { (STOPS[1], STOPS[2]) };
    let f = (w - lo.0) / (hi.0 - lo.0);
    let channel = |k: usize| (lo.1[k] + f * (hi.1[k] - lo.1[k])).round() as u8;
    RGBColor(channel(0), channel(1), channel(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_map_onto_the_ramp_clamped_with_nan_grey() {
        assert_eq!(weight_color(0.0), RGBColor(247, 251, 255));
        assert_eq!(weight_color(0.5), RGBColor(107, 174, 214));
        assert_eq!(weight_color(1.0), RGBColor(8, 48, 107));
        assert_eq!(weight_color(2.0), weight_color(1.0));
        assert_eq!(weight_color(-1.0), weight_color(0.0));
        assert_eq!(weight_color(f32::NAN), RGBColor(190, 190, 190));
    }

    #[test]
    fn long_tokens_are_cut_with_an_ellipsis() {
        assert_eq!(short_label("▁Katze"), "▁Katze");
        assert_eq!(short_label("extraordinarily_long"), "extraordinari…");
        assert_eq!(short_label("extraordinarily_long").chars().count(), MAX_LABEL_CHARS);
    }
}
