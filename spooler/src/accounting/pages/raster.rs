//! Page counts of the raster formats IPP Everywhere printers take.
//!
//! PWG raster (PWG 5102.4): a `RaS2` sync word, then per page a 1796-byte header and the
//! compressed lines. Pages are counted by walking the headers, decoding each line's
//! run-length encoding just enough to find where the next page starts.
//!
//! Apple raster (URF, "UNIRAST"): the 12-byte file header carries the page count; when a
//! writer left it 0, the pages are walked like PWG raster (32-byte page headers).

use std::io::{self, BufRead, Read};

use super::PageCountError;

const PWG_SYNC: &[u8; 4] = b"RaS2";
const PWG_HEADER_LEN: usize = 1796;
/// Offsets of the big-endian `unsigned int` fields of the PWG page header.
const PWG_WIDTH: usize = 372;
const PWG_HEIGHT: usize = 376;
const PWG_BITS_PER_PIXEL: usize = 388;
const PWG_BYTES_PER_LINE: usize = 392;

const URF_MAGIC: &[u8; 8] = b"UNIRAST\0";
const URF_PAGE_HEADER_LEN: usize = 32;
const URF_WIDTH: usize = 12;
const URF_HEIGHT: usize = 16;

/// Largest bitmap side accepted (pixels), which bounds the work on a forged header.
const MAX_SIDE: u32 = 1 << 20;

/// One page's geometry, as its header gives it.
struct Geometry {
    height: u32,
    bytes_per_pixel: u32,
    bytes_per_line: u32,
}

/// How a line's run-length code 128 is read.
#[derive(Clone, Copy, PartialEq)]
enum Code128 {
    /// PWG raster: 129 literal pixels follow.
    Literal,
    /// URF: the rest of the line is blank; no data follows.
    FillLine,
}

pub(super) fn count_pwg(mut reader: impl BufRead) -> Result<u32, PageCountError> {
    let malformed = |reason: &str| PageCountError::malformed("PWG raster", reason);
    let mut sync = [0; 4];
    if !read_exact(&mut reader, &mut sync, "PWG raster")? {
        return Err(malformed("shorter than the sync word"));
    }
    if &sync != PWG_SYNC {
        return Err(malformed("no RaS2 sync word"));
    }
    let mut pages = 0_u32;
    let mut header = vec![0; PWG_HEADER_LEN];
    while read_exact(&mut reader, &mut header, "PWG raster")? {
        let field = |offset: usize| {
            u32::from_be_bytes([
                header[offset],
                header[offset + 1],
                header[offset + 2],
                header[offset + 3],
            ])
        };
        let width = field(PWG_WIDTH);
        let bits = field(PWG_BITS_PER_PIXEL);
        let bytes_per_line = field(PWG_BYTES_PER_LINE);
        let page = pages + 1;
        if !matches!(
            bits,
            1 | 2 | 4 | 8 | 16 | 24 | 32 | 40 | 48 | 56 | 64 | 72 | 80 | 88 | 96 | 120
        ) {
            return Err(malformed(&format!("page {page}: {bits} bits per pixel")));
        }
        if !(1..=MAX_SIDE).contains(&width)
            || u64::from(bytes_per_line) != (u64::from(width) * u64::from(bits)).div_ceil(8)
        {
            return Err(malformed(&format!(
                "page {page}: {width} pixels of {bits} bits do not make {bytes_per_line} bytes per line"
            )));
        }
        let geometry = Geometry {
            height: field(PWG_HEIGHT),
            // Below 8 bits per pixel the run-length unit is one byte.
            bytes_per_pixel: bits.div_ceil(8),
            bytes_per_line,
        };
        skip_page(&mut reader, &geometry, Code128::Literal)
            .map_err(|error| page_error("PWG raster", page, error))?;
        pages = page;
    }
    if pages == 0 {
        return Err(malformed("no page header"));
    }
    Ok(pages)
}

pub(super) fn count_urf(mut reader: impl BufRead) -> Result<u32, PageCountError> {
    let malformed = |reason: &str| PageCountError::malformed("URF", reason);
    let mut file_header = [0; 12];
    if !read_exact(&mut reader, &mut file_header, "URF")? {
        return Err(malformed("shorter than the file header"));
    }
    if &file_header[..8] != URF_MAGIC {
        return Err(malformed("no UNIRAST magic"));
    }
    let declared = u32::from_be_bytes([
        file_header[8],
        file_header[9],
        file_header[10],
        file_header[11],
    ]);
    if declared > 0 {
        return Ok(declared);
    }
    let mut pages = 0_u32;
    let mut header = [0; URF_PAGE_HEADER_LEN];
    while read_exact(&mut reader, &mut header, "URF")? {
        let field = |offset: usize| {
            u32::from_be_bytes([
                header[offset],
                header[offset + 1],
                header[offset + 2],
                header[offset + 3],
            ])
        };
        let page = pages + 1;
        let bits = u32::from(header[0]);
        let width = field(URF_WIDTH);
        // 1 bit per pixel is Ghostscript's monochrome `urf` device; the others are Apple's.
        if !matches!(bits, 1 | 8 | 16 | 24 | 32 | 48 | 64) || !(1..=MAX_SIDE).contains(&width) {
            return Err(malformed(&format!(
                "page {page}: {width} pixels of {bits} bits per pixel"
            )));
        }
        let geometry = Geometry {
            height: field(URF_HEIGHT),
            bytes_per_pixel: bits.div_ceil(8),
            bytes_per_line: (width * bits).div_ceil(8),
        };
        skip_page(&mut reader, &geometry, Code128::FillLine)
            .map_err(|error| page_error("URF", page, error))?;
        pages = page;
    }
    if pages == 0 {
        return Err(malformed("no page header"));
    }
    Ok(pages)
}

/// Why a page's lines could not be walked.
enum LineError {
    Io(io::Error),
    Truncated,
    Overrun,
}

fn page_error(format: &'static str, page: u32, error: LineError) -> PageCountError {
    match error {
        LineError::Io(error) => PageCountError::Io(error),
        LineError::Truncated => {
            PageCountError::malformed(format, format!("page {page} ends early"))
        }
        LineError::Overrun => PageCountError::malformed(
            format,
            format!("page {page} has a line longer than its header says"),
        ),
    }
}

/// Skips one page's compressed lines: per line group a repeat count byte, then runs of a
/// repeated pixel (code 0..=127: code + 1 copies of one pixel) or literal pixels (code
/// 129..=255: 257 - code pixels; 128 per `code_128`).
fn skip_page(
    reader: &mut impl BufRead,
    geometry: &Geometry,
    code_128: Code128,
) -> Result<(), LineError> {
    let pixel = u64::from(geometry.bytes_per_pixel);
    let line_len = u64::from(geometry.bytes_per_line);
    let mut line = 0_u64;
    while line < u64::from(geometry.height) {
        let repeat = read_byte(reader)?;
        line += u64::from(repeat) + 1;
        let mut filled = 0_u64;
        while filled < line_len {
            let code = read_byte(reader)?;
            let (pixels, data_bytes) = match code {
                0..=127 => (u64::from(code) + 1, pixel),
                128 if code_128 == Code128::FillLine => break,
                _ => {
                    let literal = 257 - u64::from(code);
                    (literal, literal * pixel)
                }
            };
            filled += pixels * pixel;
            if filled > line_len {
                return Err(LineError::Overrun);
            }
            skip(reader, data_bytes)?;
        }
    }
    Ok(())
}

fn read_byte(reader: &mut impl BufRead) -> Result<u8, LineError> {
    let buffer = reader.fill_buf().map_err(LineError::Io)?;
    let Some(&byte) = buffer.first() else {
        return Err(LineError::Truncated);
    };
    reader.consume(1);
    Ok(byte)
}

fn skip(reader: &mut impl BufRead, mut count: u64) -> Result<(), LineError> {
    while count > 0 {
        let buffer = reader.fill_buf().map_err(LineError::Io)?;
        if buffer.is_empty() {
            return Err(LineError::Truncated);
        }
        let step = buffer
            .len()
            .min(usize::try_from(count).unwrap_or(usize::MAX));
        reader.consume(step);
        count -= step as u64;
    }
    Ok(())
}

/// Fills `buf`: true when it was filled, false at a clean end of input, an error when the
/// input ends part way.
fn read_exact(
    reader: &mut impl Read,
    buf: &mut [u8],
    format: &'static str,
) -> Result<bool, PageCountError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(PageCountError::malformed(format, "a header ends part way")),
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(PageCountError::Io(error)),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::super::count_pages;
    use super::*;

    /// One line of `width` pixels of `pixel` bytes, as runs of one repeated colour, except
    /// that the first run is literal when `literal` (so both run kinds are walked).
    fn encode_line(width: u32, pixel: usize, literal: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut left = width;
        if literal {
            let count = left.min(128);
            out.push((257 - count) as u8);
            out.extend((0..count as usize * pixel).map(|i| i as u8));
            left -= count;
        }
        while left > 0 {
            let count = left.min(128);
            out.push((count - 1) as u8);
            out.extend(std::iter::repeat_n(0xaa, pixel));
            left -= count;
        }
        out
    }

    /// The lines of a page: groups of up to 256 identical lines.
    fn encode_page(width: u32, height: u32, pixel: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut line = 0;
        while line < height {
            let group = (height - line).min(256);
            out.push((group - 1) as u8);
            out.extend(encode_line(width, pixel, line % 2 == 0));
            line += group;
        }
        out
    }

    /// A PWG raster document of `pages` pages (8-bit sRGB, 300 dpi, small).
    pub(crate) fn pwg_raster(pages: u32) -> Vec<u8> {
        let (width, height, bits) = (300_u32, 400_u32, 24_u32);
        let mut out = PWG_SYNC.to_vec();
        for _ in 0..pages {
            let mut header = vec![0_u8; PWG_HEADER_LEN];
            header[..9].copy_from_slice(b"PwgRaster");
            let mut set = |offset: usize, value: u32| {
                header[offset..offset + 4].copy_from_slice(&value.to_be_bytes());
            };
            set(276, 300);
            set(280, 300);
            set(PWG_WIDTH, width);
            set(PWG_HEIGHT, height);
            set(384, 8);
            set(PWG_BITS_PER_PIXEL, bits);
            set(PWG_BYTES_PER_LINE, width * bits / 8);
            set(400, 19); // sRGB
            set(420, 3);
            out.extend(header);
            out.extend(encode_page(width, height, (bits / 8) as usize));
        }
        out
    }

    fn urf(declared: u32, pages: u32) -> Vec<u8> {
        let (width, height) = (200_u32, 300_u32);
        let mut out = URF_MAGIC.to_vec();
        out.extend(declared.to_be_bytes());
        for page in 0..pages {
            let mut header = [0_u8; URF_PAGE_HEADER_LEN];
            header[0] = 24;
            header[1] = 1;
            header[URF_WIDTH..URF_WIDTH + 4].copy_from_slice(&width.to_be_bytes());
            header[URF_HEIGHT..URF_HEIGHT + 4].copy_from_slice(&height.to_be_bytes());
            header[20..24].copy_from_slice(&300_u32.to_be_bytes());
            out.extend(header);
            if page % 2 == 0 {
                out.extend(encode_page(width, height, 3));
            } else {
                // Code 128 blanks the rest of each line in URF.
                for _ in 0..height {
                    out.extend([0, 0, 7, 8, 9, 128]);
                }
            }
        }
        out
    }

    #[test]
    fn pwg_raster_pages_are_walked() {
        assert_eq!(count_pages("image/pwg-raster", &pwg_raster(3)).unwrap(), 3);
        assert_eq!(count_pages("image/pwg-raster", &pwg_raster(1)).unwrap(), 1);
    }

    #[test]
    fn pwg_raster_truncated_or_forged_is_malformed() {
        let doc = pwg_raster(2);
        for bad in [
            &doc[..doc.len() - 10],
            &doc[..4 + 100],
            &doc[..4],
            b"RaSt\0\0\0\0".as_slice(),
        ] {
            let error = count_pages("image/pwg-raster", bad).unwrap_err();
            assert!(
                matches!(
                    error,
                    PageCountError::Malformed {
                        format: "PWG raster",
                        ..
                    }
                ),
                "{error}"
            );
        }
        let mut forged = pwg_raster(1);
        forged[4 + PWG_BYTES_PER_LINE + 3] ^= 1;
        assert!(count_pages("image/pwg-raster", &forged).is_err());
    }

    #[test]
    fn urf_count_comes_from_the_header() {
        assert_eq!(count_pages("image/urf", &urf(5, 0)).unwrap(), 5);
    }

    #[test]
    fn urf_without_a_count_is_walked() {
        assert_eq!(count_pages("image/urf", &urf(0, 3)).unwrap(), 3);
        assert!(count_pages("image/urf", &urf(0, 0)).is_err());
        assert!(count_pages("image/urf", b"UNIRAS").is_err());
    }
}
