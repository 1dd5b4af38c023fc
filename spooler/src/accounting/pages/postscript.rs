//! PostScript page count from the Document Structuring Conventions (DSC 3.0).
//!
//! In order of trust: the `%%Pages: N` comment (the trailer's when the header says
//! `(atend)`), else the number of `%%Page:` comments, else the number of `showpage`
//! operators (an estimate: procedures that wrap `showpage` hide pages from it). Comments of
//! documents embedded between `%%BeginDocument` and `%%EndDocument` are not the job's own
//! and are ignored.

use std::io::{self, BufRead};

use super::PageCountError;

/// DSC lines are at most 255 bytes; longer lines are kept only up to this many.
const MAX_COMMENT: usize = 256;

#[derive(Default)]
struct Counts {
    /// The last `%%Pages: N` seen outside embedded documents.
    declared: Option<u32>,
    page_comments: u32,
    showpages: u32,
    /// How deep inside `%%BeginDocument` ... `%%EndDocument` the current line is.
    embedded: u32,
}

impl Counts {
    fn comment(&mut self, line: &[u8]) {
        if line.starts_with(b"%%BeginDocument") {
            self.embedded += 1;
        } else if line.starts_with(b"%%EndDocument") {
            self.embedded = self.embedded.saturating_sub(1);
        } else if self.embedded > 0 {
        } else if let Some(value) = line.strip_prefix(b"%%Pages:") {
            // `(atend)` defers to a later `%%Pages:` in the trailer; an order may follow N.
            let first = value
                .split(|b| b.is_ascii_whitespace())
                .find(|word| !word.is_empty());
            if let Some(pages) = first
                .and_then(|word| std::str::from_utf8(word).ok())
                .and_then(|word| word.parse().ok())
            {
                self.declared = Some(pages);
            }
        } else if line.starts_with(b"%%Page:") {
            self.page_comments = self.page_comments.saturating_add(1);
        }
    }

    fn pages(&self) -> Option<u32> {
        [
            self.declared.unwrap_or(0),
            self.page_comments,
            self.showpages,
        ]
        .into_iter()
        .find(|&pages| pages > 0)
    }
}

/// Counts the pages of a PostScript document, reading it once.
pub(super) fn count(reader: impl BufRead) -> Result<u32, PageCountError> {
    let counts = scan(reader)?;
    counts.pages().ok_or_else(|| {
        PageCountError::malformed("PostScript", "no %%Pages or %%Page comment and no showpage")
    })
}

fn scan(mut reader: impl BufRead) -> io::Result<Counts> {
    const SHOWPAGE: &[u8] = b"showpage";
    let mut counts = Counts::default();
    // The start of the current line, up to MAX_COMMENT bytes.
    let mut line = Vec::with_capacity(MAX_COMMENT);
    // How much of `showpage` the last bytes matched, and whether a delimiter preceded it.
    let mut matched = 0;
    let mut previous_ends_word = true;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        for &byte in chunk {
            if byte == b'\n' || byte == b'\r' {
                if line.starts_with(b"%%") {
                    counts.comment(&line);
                }
                line.clear();
            } else if line.len() < MAX_COMMENT {
                line.push(byte);
            }
            // `showpage` as a whole word (no letter of it repeats, so no backtracking).
            if matched == SHOWPAGE.len() {
                if ends_word(byte) {
                    counts.showpages = counts.showpages.saturating_add(1);
                }
                matched = 0;
            }
            if byte == SHOWPAGE[matched] && (matched > 0 || previous_ends_word) {
                matched += 1;
            } else {
                matched = usize::from(byte == SHOWPAGE[0] && previous_ends_word);
            }
            previous_ends_word = ends_word(byte);
        }
        let consumed = chunk.len();
        reader.consume(consumed);
    }
    if line.starts_with(b"%%") {
        counts.comment(&line);
    }
    if matched == SHOWPAGE.len() {
        counts.showpages = counts.showpages.saturating_add(1);
    }
    Ok(counts)
}

/// White space and the PostScript delimiters end a name.
fn ends_word(byte: u8) -> bool {
    byte.is_ascii_whitespace()
        || matches!(
            byte,
            b'\0' | b'(' | b')' | b'<' | b'>' | b'[' | b']' | b'{' | b'}' | b'/' | b'%'
        )
}

#[cfg(test)]
mod tests {
    use super::super::count_pages;
    use super::*;

    const PS: &str = "application/postscript";

    fn dsc(header_pages: &str, pages: u32, trailer_pages: Option<u32>) -> String {
        let mut doc = format!(
            "%!PS-Adobe-3.0\n%%Creator: test\n%%Pages: {header_pages}\n%%EndComments\n%%BeginProlog\n/F {{ /Helvetica findfont 12 scalefont setfont }} def\n%%EndProlog\n"
        );
        for page in 1..=pages {
            doc +=
                &format!("%%Page: {page} {page}\nF 72 720 moveto (page {page}) show\nshowpage\n");
        }
        doc += "%%Trailer\n";
        if let Some(pages) = trailer_pages {
            doc += &format!("%%Pages: {pages}\n");
        }
        doc + "%%EOF\n"
    }

    #[test]
    fn dsc_pages_comment_gives_the_count() {
        assert_eq!(count_pages(PS, dsc("3", 3, None).as_bytes()).unwrap(), 3);
        // The declared count wins over the page comments (a document may use fewer).
        assert_eq!(count_pages(PS, dsc("5", 2, None).as_bytes()).unwrap(), 5);
        // An order after the count is allowed.
        assert_eq!(count_pages(PS, dsc("4 1", 4, None).as_bytes()).unwrap(), 4);
    }

    #[test]
    fn atend_is_read_from_the_trailer() {
        let doc = dsc("(atend)", 3, Some(7));
        assert_eq!(count_pages(PS, doc.as_bytes()).unwrap(), 7);
        // (atend) without a trailer value falls back to the page comments.
        let doc = dsc("(atend)", 3, None);
        assert_eq!(count_pages(PS, doc.as_bytes()).unwrap(), 3);
    }

    #[test]
    fn embedded_documents_do_not_count() {
        let embedded = "%%BeginDocument: logo.eps\n%!PS-Adobe-3.0 EPSF-3.0\n%%Pages: 9\n%%Page: 1 1\nshowpage\n%%EndDocument\n";
        let doc = dsc("(atend)", 2, Some(2)).replace("%%Trailer", &format!("{embedded}%%Trailer"));
        assert_eq!(count_pages(PS, doc.as_bytes()).unwrap(), 2);
        let without_pages =
            dsc("(atend)", 2, None).replace("%%Trailer", &format!("{embedded}%%Trailer"));
        assert_eq!(count_pages(PS, without_pages.as_bytes()).unwrap(), 2);
    }

    #[test]
    fn without_dsc_showpage_is_counted() {
        let doc = "%!\n/s { showpage } def\n(a) show showpage\r(b) show showpage\n/showpages 1 def\nxshowpage\nshowpage";
        // `showpage` in the procedure, two calls, and the last one at the very end; not
        // `showpages` or `xshowpage`.
        assert_eq!(count_pages(PS, doc.as_bytes()).unwrap(), 4);
    }

    #[test]
    fn crlf_and_long_lines_are_handled() {
        let doc = dsc("2", 2, None).replace('\n', "\r\n");
        assert_eq!(count_pages(PS, doc.as_bytes()).unwrap(), 2);
        let long = format!("%!\n({}) show showpage\n", "x".repeat(10_000));
        assert_eq!(count_pages(PS, long.as_bytes()).unwrap(), 1);
    }

    #[test]
    fn nothing_to_count_is_an_error() {
        let error = count_pages(PS, b"%!PS\n1 2 add pop\n").unwrap_err();
        assert!(matches!(
            error,
            PageCountError::Malformed {
                format: "PostScript",
                ..
            }
        ));
    }
}
