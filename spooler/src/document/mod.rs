//! Document format detection: what a document is, judged from its first bytes.
//!
//! Clients that do not know (or do not say) what they send use
//! `application/octet-stream`; the spooler then looks at the data itself so printers and
//! accounting get a real MIME type.

/// The MIME type used when nothing better is known.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// How many leading bytes `detect_format` looks at for text.
const TEXT_SAMPLE: usize = 4096;

/// The MIME type of a document judged from its first bytes (a few KiB are plenty).
///
/// PDF, PostScript, PWG raster, Apple raster (URF), JPEG, PNG and PCL are recognised by
/// their signatures; anything that looks like text is `text/plain`; the rest is
/// `application/octet-stream`.
pub fn detect_format(head: &[u8]) -> &'static str {
    // Some generators put a few bytes of junk (a BOM, PJL) before `%PDF`: look a little in.
    let pdf_window = &head[..head.len().min(1024)];
    if head.starts_with(b"%PDF") || (find(pdf_window, b"%PDF-").is_some() && !starts_with_pjl(head))
    {
        return "application/pdf";
    }
    if head.starts_with(b"%!") || head.starts_with(b"\x04%!") {
        return "application/postscript";
    }
    if head.starts_with(b"RaS2") {
        return "image/pwg-raster";
    }
    if head.starts_with(b"UNIRAST") {
        return "image/urf";
    }
    if head.starts_with(b"\xFF\xD8\xFF") {
        return "image/jpeg";
    }
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        return "image/png";
    }
    if head.starts_with(b"\x1bE") || head.starts_with(b"\x1b%-12345X") {
        return "application/vnd.hp-pcl";
    }
    if looks_like_text(&head[..head.len().min(TEXT_SAMPLE)]) {
        return "text/plain";
    }
    OCTET_STREAM
}

fn starts_with_pjl(head: &[u8]) -> bool {
    head.starts_with(b"\x1b%-12345X")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Plausible text: not empty, valid UTF-8 (allowing a character cut at the end of the
/// sample), and no control characters other than whitespace, form feed and escape.
fn looks_like_text(sample: &[u8]) -> bool {
    if sample.is_empty() {
        return false;
    }
    let text = match std::str::from_utf8(sample) {
        Ok(text) => text,
        // A multi-byte character cut by the sample boundary is still text.
        Err(error) if error.error_len().is_none() => match sample.get(..error.valid_up_to()) {
            Some(valid) => std::str::from_utf8(valid).unwrap_or_default(),
            None => return false,
        },
        Err(_) => return false,
    };
    !text.is_empty()
        && text
            .chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t' | '\x0c' | '\x1b'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_page_description_languages_by_signature() {
        assert_eq!(detect_format(b"%PDF-1.7\n%\xe2\xe3"), "application/pdf");
        assert_eq!(detect_format(b"%!PS-Adobe-3.0\n"), "application/postscript");
        assert_eq!(detect_format(b"\x04%!PS"), "application/postscript");
        assert_eq!(detect_format(b"RaS2PwgRaster\0"), "image/pwg-raster");
        assert_eq!(detect_format(b"UNIRAST\0\0\0\0\x01"), "image/urf");
        assert_eq!(detect_format(b"\xFF\xD8\xFF\xE0\0\x10JFIF"), "image/jpeg");
        assert_eq!(detect_format(b"\x89PNG\r\n\x1a\n\0\0"), "image/png");
        assert_eq!(detect_format(b"\x1bE\x1b&l0O"), "application/vnd.hp-pcl");
    }

    #[test]
    fn finds_pdf_after_a_short_preamble() {
        assert_eq!(detect_format(b"\xEF\xBB\xBF%PDF-1.4\n"), "application/pdf");
    }

    #[test]
    fn plain_text_and_utf8_are_text() {
        assert_eq!(
            detect_format(b"Hello, printer!\r\n\x0cPage 2\n"),
            "text/plain"
        );
        assert_eq!(detect_format("Grüße aus Köln\n".as_bytes()), "text/plain");
        // A two-byte character cut by the sample boundary.
        assert_eq!(detect_format(b"abc\xc3"), "text/plain");
    }

    #[test]
    fn binary_and_empty_data_are_octet_stream() {
        assert_eq!(detect_format(b""), OCTET_STREAM);
        assert_eq!(detect_format(b"\0\x01\x02\x03binary"), OCTET_STREAM);
        assert_eq!(detect_format(b"\xff\xfe\xfd not utf-8"), OCTET_STREAM);
        assert_eq!(detect_format(b"PK\x03\x04zipfile"), OCTET_STREAM);
    }
}
