//! The queue icon IPP Everywhere clients show (`printer-icons`): a small printer drawn in
//! code and encoded as PNG once, so the spooler ships no image files.

use std::sync::OnceLock;

use bytes::Bytes;

/// Width and height in pixels (the size IPP Everywhere calls for first).
pub const SIZE: u32 = 128;

/// The PNG, made on first use.
pub fn png() -> Bytes {
    static PNG: OnceLock<Bytes> = OnceLock::new();
    PNG.get_or_init(|| Bytes::from(encode_png(SIZE, SIZE, &draw())))
        .clone()
}

type Rgba = [u8; 4];

const CLEAR: Rgba = [0, 0, 0, 0];
const BODY: Rgba = [70, 78, 90, 255];
const EDGE: Rgba = [40, 44, 52, 255];
const PAPER: Rgba = [250, 250, 250, 255];
const INK: Rgba = [150, 160, 175, 255];
const LIGHT: Rgba = [60, 200, 90, 255];

/// A printer seen from the front: paper in, body, paper out with a few lines of text.
fn draw() -> Vec<Rgba> {
    let mut pixels = vec![CLEAR; (SIZE * SIZE) as usize];
    let mut fill = |x0: u32, y0: u32, x1: u32, y1: u32, colour: Rgba| {
        for y in y0..y1.min(SIZE) {
            for x in x0..x1.min(SIZE) {
                pixels[(y * SIZE + x) as usize] = colour;
            }
        }
    };
    fill(34, 10, 94, 50, EDGE);
    fill(36, 12, 92, 50, PAPER);
    fill(10, 46, 118, 98, EDGE);
    fill(12, 48, 116, 96, BODY);
    fill(24, 86, 104, 90, EDGE);
    fill(100, 56, 108, 64, LIGHT);
    fill(30, 88, 98, 120, EDGE);
    fill(32, 88, 96, 118, PAPER);
    for line in 0..4 {
        let y = 96 + line * 5;
        fill(38, y, if line == 3 { 70 } else { 90 }, y + 2, INK);
    }
    pixels
}

/// An 8-bit RGBA PNG (RFC 2083): signature, IHDR, one zlib IDAT, IEND.
fn encode_png(width: u32, height: u32, pixels: &[Rgba]) -> Vec<u8> {
    let mut raw = Vec::with_capacity((height * (1 + width * 4)) as usize);
    for row in pixels.chunks(width as usize) {
        raw.push(0); // filter type None
        raw.extend(row.iter().flatten());
    }
    let mut header = Vec::with_capacity(13);
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 6, 0, 0, 0]); // depth 8, RGBA, deflate, no filter set, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &header);
    chunk(
        &mut png,
        b"IDAT",
        &miniz_oxide::deflate::compress_to_vec_zlib(&raw, 9),
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

fn chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    png.extend_from_slice(&(data.len() as u32).to_be_bytes());
    png.extend_from_slice(kind);
    png.extend_from_slice(data);
    png.extend_from_slice(&crc32(kind.iter().chain(data)).to_be_bytes());
}

/// CRC-32 (ISO 3309), as PNG chunks carry it.
fn crc32<'a>(bytes: impl IntoIterator<Item = &'a u8>) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_reference_value() {
        // The check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn the_icon_is_a_well_formed_png_of_the_advertised_size() {
        let png = png();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let mut at = 8;
        let mut chunks = Vec::new();
        while at < png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().expect("length")) as usize;
            let kind = &png[at + 4..at + 8];
            let data = &png[at + 8..at + 8 + len];
            let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().expect("crc"));
            assert_eq!(
                crc32(kind.iter().chain(data)),
                crc,
                "CRC of {}",
                String::from_utf8_lossy(kind)
            );
            chunks.push((kind.to_vec(), data.to_vec()));
            at += 12 + len;
        }
        let kinds: Vec<&[u8]> = chunks.iter().map(|(kind, _)| kind.as_slice()).collect();
        assert_eq!(kinds, [b"IHDR".as_slice(), b"IDAT", b"IEND"]);
        assert_eq!(
            &chunks[0].1[..8],
            [&SIZE.to_be_bytes()[..], &SIZE.to_be_bytes()[..]].concat()
        );
        let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&chunks[1].1).expect("inflate");
        assert_eq!(raw.len(), (SIZE * (1 + SIZE * 4)) as usize);
        // Not blank: the drawing put opaque pixels in.
        assert!(
            raw.chunks(4)
                .any(|pixel| pixel.len() == 4 && pixel[3] == 255)
        );
    }
}
