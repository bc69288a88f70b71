//! NumPy's `.npy` format (version 1.0) for an (N, C) float32 matrix: what `numpy.load` reads back.

use std::io::Write;

/// Writes `rows` (each of the same length C) through `out`, in one buffered pass (candle's `write_npy` issues
/// one system call per element).
pub fn write_f32_matrix(mut out: impl Write, rows: &[Vec<f32>]) -> std::io::Result<()> {
    let columns = rows.first().map_or(0, Vec::len);
    if let Some(row) = rows.iter().position(|r| r.len() != columns) {
        let message = format!("row {row} has {} values, row 0 has {columns}", rows[row].len());
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, message));
    }
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {columns}), }}", rows.len());
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    out.write_all(b"\x93NUMPY\x01\x00")?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    for row in rows {
        for value in row {
            out.write_all(&value.to_le_bytes())?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    #[test]
    fn npy_header_is_aligned_and_data_follows() {
        let mut bytes = Vec::new();
        super::write_f32_matrix(&mut bytes, &[vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0, 6.0]]).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.contains("'shape': (3, 2)") && header.ends_with('\n'), "{header}");
        assert_eq!(bytes.len(), 10 + header_len + 6 * 4);
        assert_eq!(&bytes[10 + header_len..10 + header_len + 4], &1f32.to_le_bytes());
        assert!(super::write_f32_matrix(Vec::new(), &[vec![1.0], vec![1.0, 2.0]]).is_err());
    }
}
