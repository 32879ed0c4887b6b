//! Token + position embedding forward and backward. Shader: `embedding.wgsl`.

use super::{as_matrix, bind, bind_u32, expect_len, groups, row_ranges};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Recorder, Shader, Tensor, Work};
use std::sync::Arc;

pub const SHADER: Shader =
    Shader { name: "embedding", source: include_str!("../../shaders/embedding.wgsl"), includes: &[] };

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    rows: u32,
    row_offset: u32,
    positions: u32,
    first_bucket: u32,
}

/// Hugging Face's position ids for a left-padded batch: `max(cumsum(mask) − 1, 0)` per row, so
/// the first real token of every row is at position 0. `mask` is [B, T], nonzero = real token.
pub fn position_ids(mask: &[u32], t: usize) -> Vec<u32> {
    let mut pos = Vec::with_capacity(mask.len());
    for row in mask.chunks(t) {
        let mut seen = 0u32;
        for &m in row {
            seen += (m != 0) as u32;
            pos.push(seen.saturating_sub(1));
        }
    }
    pos
}

/// Checks that every index is below `rows` (a token id below the vocabulary size, a position
/// below n_positions); `what` names the indices in the error.
pub fn check_indices(indices: &[u32], rows: usize, what: &str) -> Result<()> {
    match indices.iter().position(|&i| i as usize >= rows) {
        None => Ok(()),
        Some(at) => {
            Err(Error::Input(format!("{what}[{at}] = {} is out of range: the table has {rows} rows", indices[at])))
        }
    }
}

/// The token positions grouped by the table row they read, uploaded for `embedding_backward`.
pub struct Buckets {
    /// Table row of each bucket, increasing (kept on the host to split by row slices).
    host_rows: Vec<u32>,
    rows: Tensor,
    offsets: Tensor,
    tokens: Tensor,
}

impl Buckets {
    /// Groups positions `n` by `indices[n]` (each < `table_rows`), in increasing row order.
    pub fn new(gpu: &Arc<Gpu>, indices: &[u32], table_rows: usize) -> Result<Buckets> {
        check_indices(indices, table_rows, "embedding index")?;
        let mut order: Vec<u32> = (0..indices.len() as u32).collect();
        order.sort_by_key(|&n| (indices[n as usize], n));
        let (mut rows, mut offsets) = (Vec::new(), Vec::new());
        for (j, &n) in order.iter().enumerate() {
            let row = indices[n as usize];
            if rows.last() != Some(&row) {
                rows.push(row);
                offsets.push(j as u32);
            }
        }
        offsets.push(order.len() as u32);
        // Uploaded at the size of the token count, whatever the number of distinct rows, so
        // that every batch of the same shape reuses the same pooled buffers.
        let n = indices.len();
        let padded = |v: &[u32], len: usize| [v, &vec![0; len - v.len()]].concat();
        Ok(Buckets {
            rows: gpu.upload_u32(&[n], &padded(&rows, n))?,
            offsets: gpu.upload_u32(&[n + 1], &padded(&offsets, n + 1))?,
            tokens: gpu.upload_u32(&[n], &order)?,
            host_rows: rows,
        })
    }
}

/// out [N, C] = wte[ids] + wpe[pos]. `ids` and `pos` are u32 [N], validated on upload with
/// `check_indices` (a bad id is never read: its output row is left unwritten).
pub fn embedding_forward(
    rec: &mut Recorder,
    out: &Tensor,
    ids: &Tensor,
    pos: &Tensor,
    wte: &Tensor,
    wpe: &Tensor,
) -> Result<()> {
    let (vocab, c) = as_matrix(wte);
    let (positions, c2) = as_matrix(wpe);
    expect_len(pos, ids.len(), "embedding positions")?;
    expect_len(wpe, positions * c, &format!("wpe (width {c2}) for wte {:?}", wte.shape()))?;
    expect_len(out, ids.len() * c, "embedding output")?;
    let gpu = rec.gpu().clone();
    for (row_offset, rows) in row_ranges(&gpu, vocab, c) {
        let slice = wte.view(&gpu, row_offset * c, &[rows, c])?;
        let params = Params {
            n: ids.len() as u32,
            c: c as u32,
            rows: rows as u32,
            row_offset: row_offset as u32,
            positions: positions as u32,
            first_bucket: 0,
        };
        let work = Work::floats(3 * ids.len() * c); // a wte row and a wpe row read, a row written per token
        let p = bytemuck::bytes_of(&params);
        if c.is_multiple_of(4) {
            let grid = gpu.grid(groups(ids.len() * c / 4, WG));
            let b = [bind_u32(1, ids), bind_u32(2, pos), bind(11, &slice), bind(12, wpe), bind(13, out)];
            rec.dispatch(&SHADER, "embedding_forward4", &[], p, &b, grid, work)?;
        } else {
            let grid = gpu.grid(groups(ids.len() * c, WG));
            let b = [bind_u32(1, ids), bind_u32(2, pos), bind(3, &slice), bind(4, wpe), bind(5, out)];
            rec.dispatch(&SHADER, "embedding_forward", &[], p, &b, grid, work)?;
        }
    }
    Ok(())
}

/// dtable [rows, C] += the gradient dout [N, C] gathered by `buckets` (made from the same
/// indices as the forward: ids for wte, positions for wpe).
pub fn embedding_backward(rec: &mut Recorder, dtable: &Tensor, dout: &Tensor, buckets: &Buckets) -> Result<()> {
    let (table_rows, c) = as_matrix(dtable);
    expect_len(dout, buckets.tokens.len() * c, "embedding dout")?;
    let gpu = rec.gpu().clone();
    for (row_offset, rows) in row_ranges(&gpu, table_rows, c) {
        // The buckets whose row lies in this slice (bucket rows are sorted).
        let first = buckets.host_rows.partition_point(|&r| (r as usize) < row_offset);
        let end = buckets.host_rows.partition_point(|&r| (r as usize) < row_offset + rows);
        if first == end {
            continue;
        }
        let slice = dtable.view(&gpu, row_offset * c, &[rows, c])?;
        let params = Params {
            n: (end - first) as u32,
            c: c as u32,
            rows: rows as u32,
            row_offset: row_offset as u32,
            positions: 0,
            first_bucket: first as u32,
        };
        // The vec4 form binds dout and the table as vec4 arrays.
        let vec4 = c.is_multiple_of(4);
        let (dout_at, table_at, entry, lanes) =
            if vec4 { (14, 15, "embedding_backward4", c / 4) } else { (6, 10, "embedding_backward", c) };
        let grid = gpu.grid(groups((end - first) * lanes, WG));
        let b = [
            bind(dout_at, dout),
            bind_u32(7, &buckets.rows),
            bind_u32(8, &buckets.offsets),
            bind_u32(9, &buckets.tokens),
            bind(table_at, &slice),
        ];
        // Per bucket a table row read and written, and its tokens' dout rows read (counted as
        // all of dout: the table fits one binding but for the GPT-2 vocabulary on small limits).
        let work = Work::floats(2 * (end - first) * c + dout.len());
        rec.dispatch(&SHADER, entry, &[], bytemuck::bytes_of(&params), &b, grid, work)?;
    }
    Ok(())
}
