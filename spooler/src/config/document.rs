//! Splitting a file into YAML documents (keeping their line numbers) and reading the
//! header every document has.

/// One `---`-separated document and where it starts in the file.
pub(super) struct Chunk {
    pub text: String,
    /// 1-based line of the file where `text` begins.
    pub first_line: usize,
}

/// What serde_yaml said about a chunk, placed in the file.
pub(super) struct Located {
    /// The line in the file, when serde_yaml gave one.
    pub line: Option<usize>,
    /// The field serde_yaml named, e.g. `spec.printers[0]`.
    pub field: Option<String>,
    pub reason: String,
}

impl Chunk {
    /// Moves serde_yaml's position from the chunk into the file and splits off its field path.
    pub fn locate(&self, error: &serde_yaml::Error) -> Located {
        let mut message = error.to_string();
        let line = error.location().map(|location| {
            let suffix = format!(" at line {} column {}", location.line(), location.column());
            message = message.replacen(&suffix, "", 1);
            self.first_line + location.line() - 1
        });
        // serde_yaml writes "path.to.field: what is wrong" for typed errors.
        let (field, reason) = match message.split_once(": ") {
            Some((path, rest)) if !path.is_empty() && !path.contains(char::is_whitespace) => {
                (Some(path.to_owned()), rest.to_owned())
            }
            _ => (None, message),
        };
        Located {
            line,
            field,
            reason,
        }
    }
}

/// Splits multi-document YAML at `---` lines. A `---` at the start of a line is always a
/// document marker in YAML (block scalars are indented), so this matches the parser.
/// Text before the first marker counts as a document only when it has content.
pub(super) fn split(text: &str) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut current = Chunk {
        text: String::new(),
        first_line: 1,
    };
    let mut seen_marker = false;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let content = line.trim_end_matches(['\n', '\r']);
        let rest = content
            .strip_prefix("---")
            .filter(|rest| rest.is_empty() || rest.starts_with([' ', '\t']));
        match rest {
            Some(rest) => {
                let finished = std::mem::replace(
                    &mut current,
                    Chunk {
                        text: format!("{}\n", rest.trim_start()),
                        first_line: index + 1,
                    },
                );
                if seen_marker || has_content(&finished.text) {
                    chunks.push(finished);
                }
                seen_marker = true;
            }
            None => current.text.push_str(line),
        }
    }
    chunks.push(current);
    chunks
}

/// Whether a preamble holds anything besides blank lines, comments and `%` directives.
fn has_content(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.trim();
        !(line.is_empty() || line.starts_with('#') || line.starts_with('%'))
    })
}

/// The fields every document has, read leniently so that errors can name the document.
pub(super) struct Header {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
}

impl Header {
    /// `None` when the document is not a mapping.
    pub fn read(value: &serde_yaml::Value) -> Option<Header> {
        let mapping = value.as_mapping()?;
        let string =
            |value: Option<&serde_yaml::Value>| value.and_then(|v| v.as_str()).map(str::to_owned);
        Some(Header {
            api_version: string(mapping.get("apiVersion")),
            kind: string(mapping.get("kind")),
            name: string(
                mapping
                    .get("metadata")
                    .and_then(|metadata| metadata.get("name")),
            ),
        })
    }
}
