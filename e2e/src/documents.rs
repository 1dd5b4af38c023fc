//! Small but well-formed documents of every format the tests print: PDF, PostScript, plain
//! text, JPEG and PWG raster. Generated rather than shipped so each test can choose the size
//! and embed a marker that identifies the job in what the printer received.

/// A one-page PDF whose content stream carries `marker` (so a receiver can tell jobs apart)
/// and is padded with a PDF comment so the file is at least `min_size` bytes.
pub fn pdf(marker: &str, min_size: usize) -> Vec<u8> {
    let content = format!("BT /F1 24 Tf 72 720 Td ({marker}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R >>".to_string(),
        format!(
            "<< /Length {} >>\nstream\n{content}\nendstream",
            content.len()
        ),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::with_capacity(objects.len());
    for (index, object) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{object}\nendobj\n", index + 1).as_bytes());
    }
    // Padding goes between the objects and the xref table: comments are legal there and
    // the recorded offsets stay right. The table's size depends on its own offset's digits;
    // estimating that offset as `min_size` makes the total at most a few bytes short.
    let table_len = xref_and_trailer(&offsets, min_size).len();
    let padding = min_size.saturating_sub(out.len() + table_len);
    for chunk in padding_lines(padding) {
        out.extend_from_slice(&chunk);
    }
    let xref_offset = out.len();
    out.extend_from_slice(&xref_and_trailer(&offsets, xref_offset));
    out
}

/// A PDF of `pages` pages, each with its own content stream naming its page number.
pub fn multi_page_pdf(pages: usize) -> Vec<u8> {
    let kids: Vec<String> = (0..pages).map(|n| format!("{} 0 R", 3 + 2 * n)).collect();
    let mut objects = vec![
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        format!(
            "<< /Type /Pages /Kids [{}] /Count {pages} >>",
            kids.join(" ")
        ),
    ];
    for n in 0..pages {
        let content = format!("BT /F1 24 Tf 72 720 Td (page {}) Tj ET", n + 1);
        objects.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents {} 0 R >>",
            4 + 2 * n
        ));
        objects.push(format!(
            "<< /Length {} >>\nstream\n{content}\nendstream",
            content.len()
        ));
    }
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::with_capacity(objects.len());
    for (index, object) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{object}\nendobj\n", index + 1).as_bytes());
    }
    let xref_offset = out.len();
    out.extend_from_slice(&xref_and_trailer(&offsets, xref_offset));
    out
}

fn xref_and_trailer(offsets: &[usize], xref_offset: usize) -> Vec<u8> {
    let count = offsets.len() + 1;
    let mut table = format!("xref\n0 {count}\n0000000000 65535 f \n");
    for offset in offsets {
        table.push_str(&format!("{offset:010} 00000 n \n"));
    }
    table.push_str(&format!(
        "trailer\n<< /Size {count} /Root 1 0 R >>\nstartxref\n{xref_offset}\n%%EOF\n"
    ));
    table.into_bytes()
}

/// `%` comment lines of at most 80 bytes totalling `total` bytes.
fn padding_lines(total: usize) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let mut left = total;
    while left >= 2 {
        let len = left.min(80);
        let mut line = vec![b'%'];
        line.resize(len - 1, b'x');
        line.push(b'\n');
        left -= len;
        lines.push(line);
    }
    lines
}

/// A DSC-conforming PostScript document of `pages` pages carrying `marker`.
pub fn postscript(marker: &str, pages: u32) -> Vec<u8> {
    let mut out = format!(
        "%!PS-Adobe-3.0\n%%Title: {marker}\n%%Pages: {pages}\n%%BoundingBox: 0 0 595 842\n%%EndComments\n/Helvetica findfont 24 scalefont setfont\n"
    );
    for page in 1..=pages {
        out.push_str(&format!(
            "%%Page: {page} {page}\n72 720 moveto ({marker} page {page}) show\nshowpage\n"
        ));
    }
    out.push_str("%%Trailer\n%%EOF\n");
    out.into_bytes()
}

/// A plain-text document carrying `marker`.
pub fn text(marker: &str) -> Vec<u8> {
    format!("printfleet test page\n{marker}\n").into_bytes()
}

/// A baseline JPEG of one 8x8 mid-gray block, with `components` 1 (gray) or 3 (YCbCr).
///
/// Every coefficient is zero, so one Huffman code of one bit ("0") serves both the DC
/// difference (category 0) and the AC end-of-block: the scan is two zero bits per component.
pub fn jpeg(components: u8) -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8];
    out.extend_from_slice(&[
        0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00, 0x01, 0x01, 0x00, 0x00, 0x01, 0x00,
        0x01, 0x00, 0x00,
    ]);
    out.extend_from_slice(&[0xFF, 0xDB, 0x00, 0x43, 0x00]);
    out.extend_from_slice(&[1; 64]);
    let frame_len = 8 + 3 * u16::from(components);
    out.extend_from_slice(&[0xFF, 0xC0]);
    out.extend_from_slice(&frame_len.to_be_bytes());
    out.extend_from_slice(&[0x08, 0x00, 0x08, 0x00, 0x08, components]);
    for id in 1..=components {
        out.extend_from_slice(&[id, 0x11, 0x00]);
    }
    for class in [0x00, 0x10] {
        out.extend_from_slice(&[0xFF, 0xC4, 0x00, 0x14, class, 1]);
        out.extend_from_slice(&[0; 15]);
        out.push(0x00);
    }
    let scan_len = 6 + 2 * u16::from(components);
    out.extend_from_slice(&[0xFF, 0xDA]);
    out.extend_from_slice(&scan_len.to_be_bytes());
    out.push(components);
    for id in 1..=components {
        out.extend_from_slice(&[id, 0x00]);
    }
    out.extend_from_slice(&[0x00, 0x3F, 0x00]);
    // Two zero bits per component, the rest of the byte padded with ones.
    let data_bits = 2 * u32::from(components);
    out.push((0xFFu32 >> data_bits) as u8);
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

/// PWG raster color spaces and depths used by the IPP Everywhere samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PwgType {
    Black1,
    Sgray8,
    Srgb8,
    Srgb16,
    Cmyk8,
}

impl PwgType {
    /// The sample directories' names (`black-1`, `sgray-8`, ...).
    pub fn from_keyword(keyword: &str) -> Option<PwgType> {
        Some(match keyword {
            "black-1" => PwgType::Black1,
            "sgray-8" => PwgType::Sgray8,
            "srgb-8" => PwgType::Srgb8,
            "srgb-16" => PwgType::Srgb16,
            "cmyk-8" => PwgType::Cmyk8,
            _ => return None,
        })
    }

    /// (cupsColorSpace, bits per color, colors).
    fn layout(self) -> (u32, u32, u32) {
        match self {
            PwgType::Black1 => (3, 1, 1),
            PwgType::Sgray8 => (18, 8, 1),
            PwgType::Srgb8 => (19, 8, 3),
            PwgType::Srgb16 => (19, 16, 3),
            PwgType::Cmyk8 => (6, 8, 4),
        }
    }

    /// The byte value of a blank (white) pixel component.
    fn white(self) -> u8 {
        match self {
            PwgType::Black1 | PwgType::Cmyk8 => 0x00,
            PwgType::Sgray8 | PwgType::Srgb8 | PwgType::Srgb16 => 0xFF,
        }
    }
}

/// A PWG raster (PWG 5102.4) document of `pages` blank pages of `width_pt` x `height_pt`
/// points at `dpi`, compressed as the format requires (line repeats and pixel runs).
pub fn pwg_raster(kind: PwgType, dpi: u32, width_pt: u32, height_pt: u32, pages: u32) -> Vec<u8> {
    let (color_space, bits_per_color, colors) = kind.layout();
    let bits_per_pixel = bits_per_color * colors;
    let width = width_pt * dpi / 72;
    let height = height_pt * dpi / 72;
    let bytes_per_line = (width * bits_per_pixel).div_ceil(8);
    let mut out = b"RaS2".to_vec();
    for _ in 0..pages {
        let mut header = vec![0u8; 1796];
        header[..9].copy_from_slice(b"PwgRaster");
        let mut put = |offset: usize, value: u32| {
            header[offset..offset + 4].copy_from_slice(&value.to_be_bytes());
        };
        put(276, dpi);
        put(280, dpi);
        put(340, 1);
        put(352, width_pt);
        put(356, height_pt);
        put(372, width);
        put(376, height);
        put(384, bits_per_color);
        put(388, bits_per_pixel);
        put(392, bytes_per_line);
        put(400, color_space);
        put(420, colors);
        put(452, pages);
        put(456, 1);
        put(460, 1);
        out.extend_from_slice(&header);
        // One pixel unit is a byte below 8 bits per pixel, else the pixel's bytes.
        let unit = (bits_per_pixel / 8).max(1) as usize;
        let units_per_line = bytes_per_line as usize / unit;
        let mut line = Vec::new();
        let mut left = units_per_line;
        while left > 0 {
            let run = left.min(128);
            line.push((run - 1) as u8);
            line.extend(std::iter::repeat_n(kind.white(), unit));
            left -= run;
        }
        let mut lines_left = height as usize;
        while lines_left > 0 {
            let repeat = lines_left.min(256);
            out.push((repeat - 1) as u8);
            out.extend_from_slice(&line);
            lines_left -= repeat;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdf_is_padded_and_has_consistent_xref() {
        let doc = pdf("job-7", 4096);
        assert!(doc.len().abs_diff(4096) <= 4, "{}", doc.len());
        let text = String::from_utf8(doc.clone()).unwrap();
        assert!(text.starts_with("%PDF-1.4\n") && text.ends_with("%%EOF\n"));
        assert!(text.contains("(job-7)"));
        let startxref: usize = text
            .rsplit("startxref\n")
            .next()
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(text[startxref..].starts_with("xref\n"));
        // Every recorded object offset points at that object.
        for (index, line) in text[startxref..].lines().skip(3).take(4).enumerate() {
            let offset: usize = line[..10].parse().unwrap();
            assert!(text[offset..].starts_with(&format!("{} 0 obj", index + 1)));
        }
    }

    #[test]
    fn small_pdf_is_not_padded() {
        assert!(pdf("x", 0).len() < 600);
    }

    #[test]
    fn postscript_counts_its_pages() {
        let doc = String::from_utf8(postscript("m", 3)).unwrap();
        assert!(doc.starts_with("%!PS-Adobe-3.0"));
        assert_eq!(doc.matches("%%Page: ").count(), 3);
    }

    #[test]
    fn jpeg_has_markers_and_segment_lengths() {
        let gray = jpeg(1);
        assert_eq!(&gray[..2], &[0xFF, 0xD8]);
        assert_eq!(&gray[gray.len() - 2..], &[0xFF, 0xD9]);
        assert_eq!(gray[gray.len() - 3], 0x3F);
        assert_eq!(jpeg(3)[jpeg(3).len() - 3], 0x03);
    }

    #[test]
    fn pwg_raster_header_and_size() {
        let doc = pwg_raster(PwgType::Srgb8, 150, 288, 432, 2);
        assert_eq!(&doc[..4], b"RaS2");
        assert_eq!(&doc[4..13], b"PwgRaster");
        let width = u32::from_be_bytes(doc[4 + 372..4 + 376].try_into().unwrap());
        assert_eq!(width, 600);
        let bytes_per_line = u32::from_be_bytes(doc[4 + 392..4 + 396].try_into().unwrap());
        assert_eq!(bytes_per_line, 1800);
        // 900 lines in 4 repeat groups of one line of 5 runs (4 bytes each): 4 * (1 + 20).
        assert_eq!(doc.len(), 4 + 2 * (1796 + 4 * 21));
    }
}
