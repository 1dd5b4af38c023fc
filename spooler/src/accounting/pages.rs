//! Page counts of documents, for admission (price estimate and quota check).
//!
//! The count is an estimate made before printing: the printer's own
//! `job-impressions-completed` settles the ledger when it reports one. A document whose
//! pages cannot be counted yields a [`PageCountError`], never zero, so the caller applies its
//! fallback (the printer's report, or a configured minimum).

mod pdf;
mod postscript;
mod raster;

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

/// Lines on a page of plain text when nothing else is known (66 lines: 11 in at 6 lpi).
pub const TEXT_LINES_PER_PAGE: u32 = 66;

/// Why a document's pages could not be counted.
#[derive(Debug, thiserror::Error)]
pub enum PageCountError {
    /// A format whose pages this module cannot count (JPEG, PCL, octet-stream, ...).
    #[error("pages of {format:?} documents cannot be counted")]
    UnsupportedFormat { format: String },
    /// The document does not follow its format far enough to find its pages.
    #[error("{format} document is malformed: {reason}")]
    Malformed {
        format: &'static str,
        reason: String,
    },
    /// Reading the document file failed.
    #[error("reading the document: {0}")]
    Io(#[from] io::Error),
}

impl PageCountError {
    fn malformed(format: &'static str, reason: impl Into<String>) -> PageCountError {
        PageCountError::Malformed {
            format,
            reason: reason.into(),
        }
    }
}

/// The formats whose pages can be counted: PDF needs random access, the others are read once
/// from start to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Countable {
    Pdf,
    Streamed(Streamed),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Streamed {
    PostScript,
    PwgRaster,
    Urf,
    Text,
}

impl Countable {
    /// The countable format of a MIME type (parameters such as `; charset=utf-8` ignored).
    fn of(format: &str) -> Result<Countable, PageCountError> {
        let essence = format.split(';').next().unwrap_or("").trim();
        Ok(match essence.to_ascii_lowercase().as_str() {
            "application/pdf" => Countable::Pdf,
            "application/postscript" | "application/vnd.cups-postscript" => {
                Countable::Streamed(Streamed::PostScript)
            }
            "image/pwg-raster" => Countable::Streamed(Streamed::PwgRaster),
            "image/urf" => Countable::Streamed(Streamed::Urf),
            "text/plain" => Countable::Streamed(Streamed::Text),
            _ => {
                return Err(PageCountError::UnsupportedFormat {
                    format: format.to_owned(),
                });
            }
        })
    }
}

/// Counts the pages of a document held in memory. `format` is its MIME type after detection.
pub fn count_pages(format: &str, data: &[u8]) -> Result<u32, PageCountError> {
    match Countable::of(format)? {
        Countable::Pdf => pdf::count(data),
        Countable::Streamed(format) => count_streamed(format, data),
    }
}

/// Counts the pages of a document file without loading it whole: PDF is read at the
/// offsets its cross-reference points to, the other formats are streamed once.
pub fn count_pages_in_file(format: &str, path: &Path) -> Result<u32, PageCountError> {
    let countable = Countable::of(format)?;
    let file = File::open(path)?;
    match countable {
        Countable::Pdf => pdf::count(&pdf::FileSource::new(file)?),
        Countable::Streamed(format) => {
            count_streamed(format, BufReader::with_capacity(64 * 1024, file))
        }
    }
}

fn count_streamed(format: Streamed, reader: impl BufRead) -> Result<u32, PageCountError> {
    match format {
        Streamed::PostScript => postscript::count(reader),
        Streamed::PwgRaster => raster::count_pwg(reader),
        Streamed::Urf => raster::count_urf(reader),
        Streamed::Text => Ok(count_text_pages(reader, TEXT_LINES_PER_PAGE)?),
    }
}

/// Pages of plain text: a new page after `lines_per_page` lines or at a form feed. Long lines
/// are not wrapped (an estimate; the printer's count settles). An empty document has 0 pages,
/// and a form feed at the very end does not start another page.
pub fn count_text_pages(mut reader: impl BufRead, lines_per_page: u32) -> io::Result<u32> {
    /// Where the current sheet side stands.
    #[derive(PartialEq)]
    enum Page {
        /// Nothing written since the start or the last form feed.
        Fresh,
        /// Text written, `lines` complete lines on it.
        Open { lines: u32 },
        /// Filled by lines: a form feed now ejects nothing more.
        Filled,
    }
    let lines_per_page = lines_per_page.max(1);
    let mut pages = 0_u32;
    let mut page = Page::Fresh;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        for &byte in chunk {
            if byte == b'\x0c' {
                if page == Page::Fresh {
                    // A form feed on a blank page still ejects that page.
                    pages = pages.saturating_add(1);
                }
                page = Page::Fresh;
                continue;
            }
            let lines = match page {
                Page::Open { lines } => lines,
                Page::Fresh | Page::Filled => {
                    pages = pages.saturating_add(1);
                    0
                }
            };
            page = match (byte, lines + 1) {
                (b'\n', full) if full == lines_per_page => Page::Filled,
                (b'\n', lines) => Page::Open { lines },
                _ => Page::Open { lines },
            };
        }
        let consumed = chunk.len();
        reader.consume(consumed);
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_recognised_by_mime_essence() {
        assert_eq!(Countable::of("application/PDF").ok(), Some(Countable::Pdf));
        assert_eq!(
            Countable::of("text/plain; charset=utf-8").ok(),
            Some(Countable::Streamed(Streamed::Text))
        );
        let error = count_pages("image/jpeg", b"\xff\xd8\xff").unwrap_err();
        assert!(
            matches!(error, PageCountError::UnsupportedFormat { format } if format == "image/jpeg")
        );
        assert!(matches!(
            count_pages("application/octet-stream", b"x"),
            Err(PageCountError::UnsupportedFormat { .. })
        ));
    }

    #[test]
    fn text_pages_break_every_66_lines() {
        let lines = |n: usize| "line\n".repeat(n);
        assert_eq!(count_pages("text/plain", b"").unwrap(), 0);
        assert_eq!(count_pages("text/plain", b"no newline").unwrap(), 1);
        assert_eq!(count_pages("text/plain", lines(66).as_bytes()).unwrap(), 1);
        assert_eq!(count_pages("text/plain", lines(67).as_bytes()).unwrap(), 2);
        assert_eq!(count_pages("text/plain", lines(132).as_bytes()).unwrap(), 2);
        assert_eq!(count_pages("text/plain", lines(133).as_bytes()).unwrap(), 3);
        assert_eq!(count_text_pages(lines(10).as_bytes(), 3).unwrap(), 4);
    }

    #[test]
    fn text_form_feeds_start_new_pages() {
        assert_eq!(count_pages("text/plain", b"a\n\x0cb\n").unwrap(), 2);
        // A trailing form feed ejects the last page, it does not add one.
        assert_eq!(count_pages("text/plain", b"a\n\x0cb\n\x0c").unwrap(), 2);
        // Two form feeds in a row leave a blank page between.
        assert_eq!(count_pages("text/plain", b"a\x0c\x0cb").unwrap(), 3);
        // A full page followed by a form feed is still one page.
        let full = format!("{}\x0cend", "x\n".repeat(66));
        assert_eq!(count_pages("text/plain", full.as_bytes()).unwrap(), 2);
    }

    #[test]
    fn files_are_counted_like_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doc.txt");
        std::fs::write(&path, "x\n".repeat(200)).unwrap();
        assert_eq!(count_pages_in_file("text/plain", &path).unwrap(), 4);
        let missing = dir.path().join("missing.pdf");
        assert!(matches!(
            count_pages_in_file("application/pdf", &missing),
            Err(PageCountError::Io(_))
        ));
    }
}
