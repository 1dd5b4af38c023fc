//! PDF page count: the `/Count` of the page tree that the newest trailer's `/Root` names.
//!
//! Only the objects on that path are read: the cross-reference sections (classic tables,
//! PDF 1.5 cross-reference streams and hybrid files, newest first along `/Prev`), the catalog,
//! the page tree root, and the object streams they sit in. When that path is broken the
//! document's `/Type /Page` objects are counted instead.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::rc::Rc;

use super::PageCountError;

/// Bytes of a document, read at offsets.
pub(super) trait Source {
    fn size(&self) -> u64;
    /// At least `len` bytes from `offset`, or all up to the end when fewer remain.
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Cow<'_, [u8]>>;
}

impl Source for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, _len: usize) -> io::Result<Cow<'_, [u8]>> {
        let start = usize::try_from(offset).map_or(self.len(), |o| o.min(self.len()));
        Ok(Cow::Borrowed(&self[start..]))
    }
}

/// A document file, read with positioned reads.
pub(super) struct FileSource {
    file: File,
    size: u64,
}

impl FileSource {
    pub(super) fn new(file: File) -> io::Result<FileSource> {
        let size = file.metadata()?.len();
        Ok(FileSource { file, size })
    }
}

impl Source for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Cow<'_, [u8]>> {
        let available = self.size.saturating_sub(offset);
        let len = len.min(usize::try_from(available).unwrap_or(usize::MAX));
        let mut buf = vec![0; len];
        let mut filled = 0;
        while filled < len {
            match self
                .file
                .read_at(&mut buf[filled..], offset + filled as u64)?
            {
                0 => break,
                n => filled += n,
            }
        }
        buf.truncate(filled);
        Ok(Cow::Owned(buf))
    }
}

/// Counts the pages of a PDF.
pub(super) fn count<S: Source + ?Sized>(source: &S) -> Result<u32, PageCountError> {
    let structured = match Document::open(source).and_then(|mut doc| doc.page_count()) {
        Ok(count) => return Ok(count),
        Err(Error::Io(error)) => return Err(PageCountError::Io(error)),
        Err(Error::Syntax(reason)) => reason,
    };
    match count_page_objects(source)? {
        0 => Err(PageCountError::malformed("PDF", structured)),
        pages => Ok(pages),
    }
}

/// Why the structured path failed.
enum Error {
    Io(io::Error),
    Syntax(String),
}

impl From<io::Error> for Error {
    fn from(error: io::Error) -> Error {
        Error::Io(error)
    }
}

fn syntax<T>(reason: impl Into<String>) -> Result<T, Error> {
    Err(Error::Syntax(reason.into()))
}

/// Bytes read first where the length of what is parsed is unknown; grows on demand.
const FIRST_WINDOW: usize = 4096;
/// Most bytes one object, cross-reference table or decoded stream may take.
const MAX_OBJECT_BYTES: usize = 64 * 1024 * 1024;
/// Most cross-reference sections followed along `/Prev` (incremental updates).
const MAX_SECTIONS: usize = 4096;
/// Deepest nesting of arrays and dictionaries, and of references resolved through others.
const MAX_DEPTH: usize = 64;
/// Largest page count believed; beyond it the count is treated as corrupt.
const MAX_PAGES: i64 = 10_000_000;

/// Where an object lives, per the cross-reference.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Location {
    Free,
    Offset(u64),
    InStream { stream: u32, index: u32 },
}

/// A decoded object stream (`/Type /ObjStm`): object numbers and where each one starts.
struct ObjectStream {
    data: Vec<u8>,
    first: usize,
    entries: Vec<(u32, usize)>,
}

struct Document<'s, S: ?Sized> {
    source: &'s S,
    /// The newest entry for each object number.
    xref: HashMap<u32, Location>,
    root: Object,
    object_streams: HashMap<u32, Rc<ObjectStream>>,
    /// How many object loads are nested right now (guards against reference loops).
    depth: usize,
}

impl<'s, S: Source + ?Sized> Document<'s, S> {
    fn open(source: &'s S) -> Result<Document<'s, S>, Error> {
        let mut doc = Document {
            source,
            xref: HashMap::new(),
            root: Object::Null,
            object_streams: HashMap::new(),
            depth: 0,
        };
        let mut next = Some(doc.startxref()?);
        let mut seen = HashSet::new();
        let mut root = None;
        while let Some(offset) = next {
            if !seen.insert(offset) || seen.len() > MAX_SECTIONS {
                return syntax("cross-reference sections form a loop");
            }
            let trailer = doc.read_section(offset)?;
            // The newest trailer that names a root wins (incremental updates repeat it).
            if root.is_none() {
                root = trailer.get(b"Root").cloned();
            }
            next = match trailer.get(b"Prev") {
                Some(prev) => Some(
                    prev.as_offset()
                        .ok_or_else(|| Error::Syntax("trailer /Prev is not an offset".into()))?,
                ),
                None => None,
            };
        }
        doc.root = root.ok_or_else(|| Error::Syntax("no trailer names a /Root".into()))?;
        Ok(doc)
    }

    fn page_count(&mut self) -> Result<u32, Error> {
        let catalog = self.resolve(self.root.clone())?;
        let Some(pages) = catalog.get(b"Pages").cloned() else {
            return syntax("catalog has no /Pages");
        };
        let pages = self.resolve(pages)?;
        let Some(count) = pages.get(b"Count").cloned() else {
            return syntax("page tree root has no /Count");
        };
        match self.resolve(count)? {
            Object::Integer(n) if (0..=MAX_PAGES).contains(&n) => Ok(n as u32),
            _ => syntax("page tree /Count is not a page count"),
        }
    }

    /// The offset of the newest cross-reference section.
    fn startxref(&self) -> Result<u64, Error> {
        const TAIL: u64 = 2048;
        let start = self.source.size().saturating_sub(TAIL);
        let tail = self.source.read_at(start, TAIL as usize)?;
        let Some(at) = rfind(&tail, b"startxref") else {
            return syntax("no startxref");
        };
        let mut lexer = Lexer::new(&tail[at + b"startxref".len()..], true);
        match lexer.integer() {
            Ok(offset) if offset >= 0 => Ok(offset as u64),
            _ => syntax("startxref is not followed by an offset"),
        }
    }

    /// Reads the cross-reference section at `offset` into `self.xref` (older entries never
    /// replace newer ones) and returns its trailer dictionary.
    fn read_section(&mut self, offset: u64) -> Result<Dictionary, Error> {
        let table = self.with_window(offset, |lexer| {
            if lexer.eat_keyword(b"xref")? {
                lexer.xref_table().map(Some)
            } else {
                Ok(None)
            }
        })?;
        let trailer = match table {
            Some((entries, trailer)) => {
                self.merge(entries);
                trailer
            }
            None => {
                let (dict, data) = self.stream_at(offset, None)?;
                if dict.get(b"Type") != Some(&Object::Name(b"XRef".to_vec())) {
                    return syntax(format!("no cross-reference at offset {offset}"));
                }
                self.merge(xref_stream_entries(&dict, &data)?);
                dict
            }
        };
        // Hybrid files: a classic table whose trailer points at a stream holding the entries
        // of compressed objects, consulted before the previous sections.
        if let Some(stream_offset) = trailer.get(b"XRefStm").and_then(Object::as_offset) {
            let (dict, data) = self.stream_at(stream_offset, None)?;
            self.merge(xref_stream_entries(&dict, &data)?);
        }
        Ok(trailer)
    }

    fn merge(&mut self, entries: Vec<(u32, Location)>) {
        for (number, location) in entries {
            self.xref.entry(number).or_insert(location);
        }
    }

    /// Runs `parse` on the bytes from `offset`, reading more while they run short.
    fn with_window<T>(
        &self,
        offset: u64,
        parse: impl Fn(&mut Lexer<'_>) -> Parsed<T>,
    ) -> Result<T, Error> {
        let mut window = FIRST_WINDOW;
        loop {
            let bytes = self.source.read_at(offset, window)?;
            let complete = offset.saturating_add(bytes.len() as u64) >= self.source.size();
            match parse(&mut Lexer::new(&bytes, complete)) {
                Ok(value) => return Ok(value),
                Err(ParseError::Invalid(reason)) => {
                    return syntax(format!("{reason} (at offset {offset})"));
                }
                Err(ParseError::Incomplete) if complete || window >= MAX_OBJECT_BYTES => {
                    return syntax(format!("object at offset {offset} is truncated"));
                }
                Err(ParseError::Incomplete) => window = (window * 4).min(MAX_OBJECT_BYTES),
            }
        }
    }

    /// The stream object at `offset`: its dictionary and its decoded data.
    fn stream_at(
        &mut self,
        offset: u64,
        expected: Option<u32>,
    ) -> Result<(Dictionary, Vec<u8>), Error> {
        let (object, data_start) = self.with_window(offset, |lexer| lexer.indirect(expected))?;
        let (Object::Dictionary(dict), Some(data_start)) = (object, data_start) else {
            return syntax(format!("no stream at offset {offset}"));
        };
        let Some(length) = dict.get(b"Length").cloned() else {
            return syntax(format!("stream at offset {offset} has no /Length"));
        };
        let length = match self.resolve(length)? {
            Object::Integer(n) if (0..=MAX_OBJECT_BYTES as i64).contains(&n) => n as usize,
            _ => return syntax(format!("stream at offset {offset} has a bad /Length")),
        };
        let raw = self.source.read_at(offset + data_start as u64, length)?;
        if raw.len() < length {
            return syntax(format!("stream at offset {offset} is truncated"));
        }
        let data = decode(&dict, &raw[..length])?;
        Ok((dict, data))
    }

    /// The object a value stands for: itself, or what its reference points to.
    fn resolve(&mut self, mut object: Object) -> Result<Object, Error> {
        for _ in 0..MAX_DEPTH {
            match object {
                Object::Reference(number) => object = self.load(number)?,
                direct => return Ok(direct),
            }
        }
        syntax("references form a loop")
    }

    fn load(&mut self, number: u32) -> Result<Object, Error> {
        if self.depth >= MAX_DEPTH {
            return syntax("objects refer to each other in a loop");
        }
        self.depth += 1;
        let loaded = self.load_nested(number);
        self.depth -= 1;
        loaded
    }

    fn load_nested(&mut self, number: u32) -> Result<Object, Error> {
        match self.xref.get(&number).copied() {
            // An object missing from the cross-reference is the null object.
            None | Some(Location::Free) => Ok(Object::Null),
            Some(Location::Offset(offset)) => {
                let (object, _) = self.with_window(offset, |lexer| lexer.indirect(Some(number)))?;
                Ok(object)
            }
            Some(Location::InStream { stream, index }) => {
                let objects = self.object_stream(stream)?;
                let hinted = objects
                    .entries
                    .get(index as usize)
                    .filter(|e| e.0 == number);
                let Some(&(_, start)) =
                    hinted.or_else(|| objects.entries.iter().find(|e| e.0 == number))
                else {
                    return syntax(format!("object {number} is not in object stream {stream}"));
                };
                let Some(bytes) = objects.data.get(objects.first.saturating_add(start)..) else {
                    return syntax(format!(
                        "object {number} lies outside object stream {stream}"
                    ));
                };
                Lexer::new(bytes, true)
                    .value(0)
                    .or_else(|_| syntax(format!("object {number} in stream {stream} is malformed")))
            }
        }
    }

    fn object_stream(&mut self, number: u32) -> Result<Rc<ObjectStream>, Error> {
        if let Some(objects) = self.object_streams.get(&number) {
            return Ok(Rc::clone(objects));
        }
        let Some(Location::Offset(offset)) = self.xref.get(&number).copied() else {
            return syntax(format!("object stream {number} is not in the file body"));
        };
        let (dict, data) = self.stream_at(offset, Some(number))?;
        let bad = || Error::Syntax(format!("object stream {number} has a bad header"));
        let count = dict.get(b"N").and_then(Object::as_offset).ok_or_else(bad)?;
        let first = dict
            .get(b"First")
            .and_then(Object::as_offset)
            .ok_or_else(bad)?;
        let first = usize::try_from(first).map_err(|_| bad())?;
        let mut header = Lexer::new(&data, true);
        let mut entries = Vec::new();
        for _ in 0..count.min(data.len() as u64) {
            let object = header.integer().map_err(|_| bad())?;
            let start = header.integer().map_err(|_| bad())?;
            let object = u32::try_from(object).map_err(|_| bad())?;
            let start = usize::try_from(start).map_err(|_| bad())?;
            entries.push((object, start));
        }
        let objects = Rc::new(ObjectStream {
            data,
            first,
            entries,
        });
        self.object_streams.insert(number, Rc::clone(&objects));
        Ok(objects)
    }
}

/// The entries of a cross-reference stream (`/W` field widths, `/Index` subsections).
fn xref_stream_entries(dict: &Dictionary, data: &[u8]) -> Result<Vec<(u32, Location)>, Error> {
    let bad = |what: &str| Error::Syntax(format!("cross-reference stream has a bad {what}"));
    let widths: Vec<usize> = match dict.get(b"W") {
        Some(Object::Array(items)) if items.len() == 3 => items
            .iter()
            .map(|w| match w {
                Object::Integer(w) if (0..=8).contains(w) => Ok(*w as usize),
                _ => Err(bad("/W")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad("/W")),
    };
    let subsections: Vec<(u64, u64)> = match dict.get(b"Index") {
        Some(Object::Array(items)) if items.len() % 2 == 0 => items
            .chunks(2)
            .map(|pair| match (pair[0].as_offset(), pair[1].as_offset()) {
                (Some(start), Some(count)) => Ok((start, count)),
                _ => Err(bad("/Index")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("/Index")),
        None => {
            let size = dict.get(b"Size").and_then(Object::as_offset);
            vec![(0, size.ok_or_else(|| bad("/Size"))?)]
        }
    };
    let row = widths.iter().sum::<usize>();
    if row == 0 {
        return Err(bad("/W"));
    }
    let mut rows = data.chunks_exact(row);
    let mut entries = Vec::new();
    for (start, count) in subsections {
        for number in start..start.saturating_add(count) {
            let Some(fields) = rows.next() else {
                return Err(bad("length"));
            };
            let number = u32::try_from(number).map_err(|_| bad("/Index"))?;
            let (kind, rest) = fields.split_at(widths[0]);
            let (second, third) = rest.split_at(widths[1]);
            // A missing type field means type 1.
            let kind = if widths[0] == 0 { 1 } else { big_endian(kind) };
            let location = match kind {
                0 => Location::Free,
                1 => Location::Offset(big_endian(second)),
                2 => Location::InStream {
                    stream: u32::try_from(big_endian(second)).map_err(|_| bad("entry"))?,
                    index: u32::try_from(big_endian(third)).map_err(|_| bad("entry"))?,
                },
                // Unknown types are references to the null object.
                _ => Location::Free,
            };
            entries.push((number, location));
        }
    }
    Ok(entries)
}

fn big_endian(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |acc, &b| (acc << 8) | u64::from(b))
}

/// A stream's data after its filters: none, or FlateDecode with an optional PNG predictor.
fn decode(dict: &Dictionary, raw: &[u8]) -> Result<Vec<u8>, Error> {
    let filters: Vec<&[u8]> = match dict.get(b"Filter") {
        None | Some(Object::Null) => Vec::new(),
        Some(Object::Name(name)) => vec![name],
        Some(Object::Array(items)) => items
            .iter()
            .filter_map(|item| match item {
                Object::Name(name) => Some(name.as_slice()),
                _ => None,
            })
            .collect(),
        Some(_) => return syntax("stream /Filter is not a name"),
    };
    let params = match dict.get(b"DecodeParms") {
        Some(Object::Dictionary(params)) => Some(params),
        Some(Object::Array(items)) => match items.first() {
            Some(Object::Dictionary(params)) => Some(params),
            _ => None,
        },
        _ => None,
    };
    match filters.as_slice() {
        [] => Ok(raw.to_vec()),
        [b"FlateDecode"] | [b"Fl"] => {
            let inflated =
                miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(raw, MAX_OBJECT_BYTES)
                    .or_else(|_| syntax("stream data does not inflate"))?;
            unpredict(inflated, params)
        }
        other => syntax(format!(
            "stream filter {:?} is not supported",
            other
                .iter()
                .map(|f| String::from_utf8_lossy(f))
                .collect::<Vec<_>>()
        )),
    }
}

/// Undoes a FlateDecode predictor: 1 (none) or the PNG ones (10 and up).
fn unpredict(data: Vec<u8>, params: Option<&Dictionary>) -> Result<Vec<u8>, Error> {
    let param = |key: &[u8], default: i64| {
        params
            .and_then(|p| p.get(key))
            .map_or(Some(default), Object::as_integer)
    };
    let predictor = param(b"Predictor", 1);
    match predictor {
        Some(1) => return Ok(data),
        Some(10..=15) => {}
        _ => return syntax("stream predictor is not supported"),
    }
    let (Some(colors), Some(bits), Some(columns)) = (
        param(b"Colors", 1),
        param(b"BitsPerComponent", 8),
        param(b"Columns", 1),
    ) else {
        return syntax("stream predictor parameters are not integers");
    };
    if !(1..=32).contains(&colors)
        || ![1, 2, 4, 8, 16].contains(&bits)
        || !(1..=1 << 20).contains(&columns)
    {
        return syntax("stream predictor parameters are out of range");
    }
    let pixel = ((colors * bits + 7) / 8) as usize;
    let row = ((columns * colors * bits + 7) / 8) as usize;
    let mut out = Vec::with_capacity(data.len());
    let mut previous = vec![0_u8; row];
    for line in data.chunks_exact(row + 1) {
        let (filter, encoded) = (line[0], &line[1..]);
        let mut current = encoded.to_vec();
        for i in 0..row {
            let left = if i >= pixel { current[i - pixel] } else { 0 };
            let up = previous[i];
            let up_left = if i >= pixel { previous[i - pixel] } else { 0 };
            let predicted = match filter {
                0 => 0,
                1 => left,
                2 => up,
                3 => ((u16::from(left) + u16::from(up)) / 2) as u8,
                4 => paeth(left, up, up_left),
                _ => return syntax("stream has an unknown PNG filter"),
            };
            current[i] = current[i].wrapping_add(predicted);
        }
        out.extend_from_slice(&current);
        previous = current;
    }
    Ok(out)
}

fn paeth(left: u8, up: u8, up_left: u8) -> u8 {
    let estimate = i16::from(left) + i16::from(up) - i16::from(up_left);
    let distance = |value: u8| (estimate - i16::from(value)).abs();
    if distance(left) <= distance(up) && distance(left) <= distance(up_left) {
        left
    } else if distance(up) <= distance(up_left) {
        up
    } else {
        up_left
    }
}

/// The fallback: how many `/Type /Page` dictionaries the file body holds (objects inside
/// compressed object streams are not seen).
fn count_page_objects<S: Source + ?Sized>(source: &S) -> io::Result<u32> {
    const CHUNK: u64 = 1 << 20;
    // Longest match: `/Type`, some white space, `/Page` and the byte after.
    const OVERLAP: usize = 64;
    let size = source.size();
    let mut pages = 0_u32;
    let mut offset = 0;
    while offset < size {
        let bytes = source.read_at(offset, CHUNK as usize + OVERLAP)?;
        // Only matches starting in this chunk count; the overlap lets them finish.
        let starts = if offset + CHUNK >= size {
            bytes.len()
        } else {
            bytes.len().min(CHUNK as usize)
        };
        pages = pages.saturating_add(page_objects_in(&bytes, starts));
        offset += CHUNK;
    }
    Ok(pages)
}

fn page_objects_in(bytes: &[u8], starts: usize) -> u32 {
    let mut pages = 0;
    let mut from = 0;
    while let Some(found) = find(&bytes[from..], b"/Type") {
        let at = from + found;
        if at >= starts {
            break;
        }
        let mut value = at + b"/Type".len();
        while bytes.get(value).is_some_and(|&b| is_space(b)) {
            value += 1;
        }
        if bytes[value..].starts_with(b"/Page")
            && bytes
                .get(value + b"/Page".len())
                .is_none_or(|&b| !is_regular(b))
        {
            pages += 1;
        }
        from = at + 1;
    }
    pages
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

fn is_space(byte: u8) -> bool {
    matches!(byte, b'\0' | b'\t' | b'\n' | b'\x0c' | b'\r' | b' ')
}

fn is_delimiter(byte: u8) -> bool {
    matches!(
        byte,
        b'(' | b')' | b'<' | b'>' | b'[' | b']' | b'{' | b'}' | b'/' | b'%'
    )
}

fn is_regular(byte: u8) -> bool {
    !is_space(byte) && !is_delimiter(byte)
}

/// A PDF value, keeping only what counting pages needs.
#[derive(Clone, Debug, PartialEq)]
enum Object {
    Null,
    Bool,
    Integer(i64),
    Real,
    Name(Vec<u8>),
    String,
    Array(Vec<Object>),
    Dictionary(Dictionary),
    Reference(u32),
}

impl Object {
    fn get(&self, key: &[u8]) -> Option<&Object> {
        match self {
            Object::Dictionary(dict) => dict.get(key),
            _ => None,
        }
    }

    fn as_integer(&self) -> Option<i64> {
        match self {
            Object::Integer(n) => Some(*n),
            _ => None,
        }
    }

    fn as_offset(&self) -> Option<u64> {
        self.as_integer().and_then(|n| u64::try_from(n).ok())
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Dictionary(Vec<(Vec<u8>, Object)>);

impl Dictionary {
    fn get(&self, key: &[u8]) -> Option<&Object> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

#[derive(Debug)]
enum ParseError {
    /// The bytes end before the value does: read more.
    Incomplete,
    Invalid(&'static str),
}

type Parsed<T> = Result<T, ParseError>;

/// Reads PDF tokens from a window of bytes. `complete` says the window reaches the end of
/// the data, so running out means the end rather than "read more".
struct Lexer<'a> {
    bytes: &'a [u8],
    pos: usize,
    complete: bool,
}

impl<'a> Lexer<'a> {
    fn new(bytes: &'a [u8], complete: bool) -> Lexer<'a> {
        Lexer {
            bytes,
            pos: 0,
            complete,
        }
    }

    fn ran_out(&self) -> ParseError {
        if self.complete {
            ParseError::Invalid("unexpected end of data")
        } else {
            ParseError::Incomplete
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Skips white space and comments.
    fn skip_space(&mut self) {
        while let Some(byte) = self.peek() {
            if is_space(byte) {
                self.pos += 1;
            } else if byte == b'%' {
                while self.peek().is_some_and(|b| b != b'\n' && b != b'\r') {
                    self.pos += 1;
                }
            } else {
                break;
            }
        }
    }

    /// A run of regular characters (may be empty).
    fn token(&mut self) -> Parsed<&'a [u8]> {
        let start = self.pos;
        while self.peek().is_some_and(is_regular) {
            self.pos += 1;
        }
        if self.pos == self.bytes.len() && !self.complete {
            return Err(ParseError::Incomplete);
        }
        Ok(&self.bytes[start..self.pos])
    }

    fn integer(&mut self) -> Parsed<i64> {
        self.skip_space();
        let token = self.token()?;
        std::str::from_utf8(token)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or(ParseError::Invalid("expected an integer"))
    }

    /// Consumes `keyword` if it comes next.
    fn eat_keyword(&mut self, keyword: &[u8]) -> Parsed<bool> {
        self.skip_space();
        let rest = &self.bytes[self.pos..];
        if rest.len() <= keyword.len() && keyword.starts_with(rest) && !self.complete {
            return Err(ParseError::Incomplete);
        }
        let ends = rest.get(keyword.len()).is_none_or(|&b| !is_regular(b));
        if rest.starts_with(keyword) && ends {
            self.pos += keyword.len();
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// `N G obj value [stream]`: the value, and where the stream data starts if there is one.
    fn indirect(&mut self, expected: Option<u32>) -> Parsed<(Object, Option<usize>)> {
        let number = self.integer()?;
        self.integer()?;
        if !self.eat_keyword(b"obj")? {
            return Err(ParseError::Invalid(
                "no object where the cross-reference points",
            ));
        }
        if expected.is_some_and(|e| i64::from(e) != number) {
            return Err(ParseError::Invalid(
                "the cross-reference points at another object",
            ));
        }
        let value = self.value(0)?;
        if !self.eat_keyword(b"stream")? {
            return Ok((value, None));
        }
        // The keyword ends with CR LF or LF (a lone CR is tolerated).
        if self.peek() == Some(b'\r') {
            self.pos += 1;
        }
        if self.peek() == Some(b'\n') {
            self.pos += 1;
        }
        Ok((value, Some(self.pos)))
    }

    /// A classic cross-reference table after its `xref` keyword, and its trailer.
    fn xref_table(&mut self) -> Parsed<(Vec<(u32, Location)>, Dictionary)> {
        let mut entries = Vec::new();
        while !self.eat_keyword(b"trailer")? {
            let start = self.integer()?;
            let count = self.integer()?;
            let (Ok(start), Ok(count)) = (u32::try_from(start), u32::try_from(count)) else {
                return Err(ParseError::Invalid("bad cross-reference subsection"));
            };
            for number in start..start.saturating_add(count) {
                let offset = self.integer()?;
                self.integer()?;
                self.skip_space();
                let location = match (self.token()?, u64::try_from(offset)) {
                    (b"n", Ok(offset)) => Location::Offset(offset),
                    (b"f", _) => Location::Free,
                    _ => return Err(ParseError::Invalid("bad cross-reference entry")),
                };
                entries.push((number, location));
            }
        }
        match self.value(0)? {
            Object::Dictionary(trailer) => Ok((entries, trailer)),
            _ => Err(ParseError::Invalid("trailer is not a dictionary")),
        }
    }

    fn value(&mut self, depth: usize) -> Parsed<Object> {
        if depth > MAX_DEPTH {
            return Err(ParseError::Invalid("values nested too deeply"));
        }
        self.skip_space();
        let Some(byte) = self.peek() else {
            return Err(self.ran_out());
        };
        match byte {
            b'/' => {
                self.pos += 1;
                Ok(Object::Name(self.name()?))
            }
            b'<' if self.bytes.get(self.pos + 1) == Some(&b'<') => {
                self.pos += 2;
                let mut entries = Vec::new();
                loop {
                    self.skip_space();
                    match self.peek() {
                        None => return Err(self.ran_out()),
                        Some(b'>') if self.bytes.get(self.pos + 1) == Some(&b'>') => {
                            self.pos += 2;
                            return Ok(Object::Dictionary(Dictionary(entries)));
                        }
                        Some(b'/') => {
                            self.pos += 1;
                            let key = self.name()?;
                            let value = self.value(depth + 1)?;
                            entries.push((key, value));
                        }
                        Some(_) => return Err(ParseError::Invalid("dictionary key is not a name")),
                    }
                }
            }
            b'<' => match self.bytes[self.pos..].iter().position(|&b| b == b'>') {
                Some(end) => {
                    self.pos += end + 1;
                    Ok(Object::String)
                }
                None => Err(self.ran_out()),
            },
            b'(' => {
                self.literal_string()?;
                Ok(Object::String)
            }
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_space();
                    match self.peek() {
                        None => return Err(self.ran_out()),
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Object::Array(items));
                        }
                        Some(_) => items.push(self.value(depth + 1)?),
                    }
                }
            }
            b'+' | b'-' | b'.' | b'0'..=b'9' => self.number(),
            _ if is_delimiter(byte) => Err(ParseError::Invalid("unexpected delimiter")),
            _ => match self.token()? {
                b"true" | b"false" => Ok(Object::Bool),
                b"null" => Ok(Object::Null),
                _ => Err(ParseError::Invalid("unexpected keyword")),
            },
        }
    }

    /// A name after its `/`, with `#xx` escapes decoded.
    fn name(&mut self) -> Parsed<Vec<u8>> {
        let raw = self.token()?;
        let mut name = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            let escaped = raw
                .get(i + 1..i + 3)
                .filter(|_| raw[i] == b'#')
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok());
            match escaped {
                Some(byte) => {
                    name.push(byte);
                    i += 3;
                }
                None => {
                    name.push(raw[i]);
                    i += 1;
                }
            }
        }
        Ok(name)
    }

    fn literal_string(&mut self) -> Parsed<()> {
        let mut depth = 0_usize;
        while let Some(byte) = self.peek() {
            self.pos += 1;
            match byte {
                b'\\' => self.pos += 1,
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
        Err(self.ran_out())
    }

    /// A number, or a reference `N G R` when two integers and `R` follow.
    fn number(&mut self) -> Parsed<Object> {
        let token = self.token()?;
        let text = std::str::from_utf8(token).map_err(|_| ParseError::Invalid("bad number"))?;
        if text.contains('.') {
            return Ok(Object::Real);
        }
        let value: i64 = text
            .parse()
            .map_err(|_| ParseError::Invalid("bad number"))?;
        let before_lookahead = self.pos;
        if self.reference_tail()?
            && let Ok(number) = u32::try_from(value)
        {
            return Ok(Object::Reference(number));
        }
        self.pos = before_lookahead;
        Ok(Object::Integer(value))
    }

    /// After an integer: whether ` G R` follows (consumed if so) to make it a reference.
    fn reference_tail(&mut self) -> Parsed<bool> {
        self.skip_space();
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return if self.peek().is_none() && !self.complete {
                Err(ParseError::Incomplete)
            } else {
                Ok(false)
            };
        }
        let generation = self.token()?;
        if !generation.iter().all(u8::is_ascii_digit) {
            return Ok(false);
        }
        self.eat_keyword(b"R")
    }
}

#[cfg(test)]
mod tests {
    use super::super::{count_pages, count_pages_in_file};
    use super::*;
    use miniz_oxide::deflate::compress_to_vec_zlib;

    const PDF: &str = "application/pdf";

    /// The objects of a document with `pages` pages: 1 the catalog, 2 the page tree root with
    /// intermediate nodes of up to 10 pages each (as real writers balance the tree), then the
    /// nodes and pages, each page with a content stream.
    fn page_tree(pages: u32) -> Vec<String> {
        let nodes = pages.div_ceil(10);
        let first_node = 3;
        let first_page = first_node + nodes;
        let mut objects = vec![
            "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
            format!(
                "<< /Type /Pages /Kids [{}] /Count {pages} >>",
                (0..nodes)
                    .map(|n| format!("{} 0 R", first_node + n))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ];
        for node in 0..nodes {
            let kids: Vec<u32> = (node * 10..((node + 1) * 10).min(pages)).collect();
            objects.push(format!(
                "<< /Type /Pages /Parent 2 0 R /Kids [{}] /Count {} >>",
                kids.iter()
                    .map(|p| format!("{} 0 R", first_page + 2 * p))
                    .collect::<Vec<_>>()
                    .join(" "),
                kids.len()
            ));
        }
        for page in 0..pages {
            let content = format!("BT /F1 24 Tf 72 720 Td (Page {}) Tj ET", page + 1);
            objects.push(format!(
                "<< /Type /Page /Parent {} 0 R /MediaBox [0 0 595.28 841.89] /Contents {} 0 R >>",
                first_node + page / 10,
                first_page + 2 * page + 1
            ));
            objects.push(format!(
                "<< /Length {} >>\nstream\n{content}\nendstream",
                content.len()
            ));
        }
        objects
    }

    /// Appends `number 0 obj ... endobj` and returns its offset.
    fn push_object(out: &mut Vec<u8>, number: u32, body: &str) -> u64 {
        let offset = out.len() as u64;
        out.extend_from_slice(format!("{number} 0 obj\n{body}\nendobj\n").as_bytes());
        offset
    }

    /// A classic xref table for `(number, offset)` entries (consecutive numbers from `first`).
    fn xref_table(first: u32, offsets: &[u64]) -> String {
        let mut table = format!("xref\n{first} {}\n", offsets.len());
        for offset in offsets {
            table += &format!("{offset:010} 00000 n\r\n");
        }
        table
    }

    /// A PDF 1.4 file with a classic cross-reference table.
    fn classic_pdf(objects: &[String]) -> Vec<u8> {
        let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
        let offsets: Vec<u64> = (1..)
            .zip(objects)
            .map(|(number, body)| push_object(&mut out, number, body))
            .collect();
        let xref = out.len();
        let table =
            xref_table(1, &offsets).replacen("xref\n1", "xref\n0 1\n0000000000 65535 f\r\n1", 1);
        out.extend_from_slice(table.as_bytes());
        out.extend_from_slice(
            format!(
                "trailer\n<< /Size {} /Root 1 0 R /Info << /Title (a (nested) title) /Producer <4142> >> >>\nstartxref\n{xref}\n%%EOF\n",
                objects.len() + 1
            )
            .as_bytes(),
        );
        out
    }

    /// PNG "Up" prediction of `rows` of `width` bytes, as /Predictor 12 expects.
    fn png_up(data: &[u8], width: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut previous = vec![0_u8; width];
        for row in data.chunks(width) {
            out.push(2);
            out.extend(row.iter().zip(&previous).map(|(b, p)| b.wrapping_sub(*p)));
            previous = row.to_vec();
        }
        out
    }

    /// A PDF 1.5 file whose objects all sit in one Flate-compressed object stream (whose
    /// /Length is an indirect object), found through a compressed cross-reference stream
    /// (with a PNG predictor when `predictor`).
    fn compressed_pdf(pages: u32, predictor: bool) -> Vec<u8> {
        let objects = page_tree(pages);
        let count = objects.len() as u32;
        let (object_stream, length_object, xref_object) = (count + 1, count + 2, count + 3);
        // Streams cannot live in object streams: the pages' content streams become plain
        // dictionaries here (the count never reads them).
        let in_stream: Vec<&str> = objects
            .iter()
            .map(|o| {
                o.split_once("\nstream\n")
                    .map_or(o.as_str(), |(dict, _)| dict)
            })
            .collect();
        let mut header = String::new();
        let mut data = String::new();
        for (number, object) in (1..).zip(&in_stream) {
            header += &format!("{number} {} ", data.len());
            data += object;
            data += "\n";
        }
        let first = header.len();
        let compressed = compress_to_vec_zlib((header + &data).as_bytes(), 6);

        let mut out = b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n".to_vec();
        let stream_offset = out.len() as u64;
        out.extend_from_slice(
            format!(
                "{object_stream} 0 obj\n<< /Type /ObjStm /N {count} /First {first} /Filter /FlateDecode /Length {length_object} 0 R >>\nstream\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(&compressed);
        out.extend_from_slice(b"\nendstream\nendobj\n");
        let length_offset = push_object(&mut out, length_object, &compressed.len().to_string());
        let xref_offset = out.len() as u64;

        let mut rows = vec![0_u8, 0, 0, 0, 0, 0xff, 0xff];
        for index in 0..count {
            rows.push(2);
            rows.extend(object_stream.to_be_bytes());
            rows.extend((index as u16).to_be_bytes());
        }
        for offset in [stream_offset, length_offset, xref_offset] {
            rows.push(1);
            rows.extend((offset as u32).to_be_bytes());
            rows.extend([0, 0]);
        }
        let (rows, parms) = if predictor {
            (
                png_up(&rows, 7),
                "/DecodeParms << /Predictor 12 /Columns 7 >>",
            )
        } else {
            (rows, "")
        };
        let rows = compress_to_vec_zlib(&rows, 6);
        out.extend_from_slice(
            format!(
                "{xref_object} 0 obj\n<< /Type /XRef /Size {} /W [1 4 2] /Root 1 0 R /Filter /FlateDecode {parms} /Length {} >>\nstream\n",
                xref_object + 1,
                rows.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(&rows);
        out.extend_from_slice(
            format!("\nendstream\nendobj\nstartxref\n{xref_offset}\n%%EOF\n").as_bytes(),
        );
        out
    }

    #[test]
    fn classic_xref_gives_the_page_tree_count() {
        for pages in [1, 3, 25] {
            assert_eq!(
                count_pages(PDF, &classic_pdf(&page_tree(pages))).unwrap(),
                pages
            );
        }
    }

    #[test]
    fn a_hundred_pages_are_counted() {
        let doc = classic_pdf(&page_tree(100));
        assert_eq!(count_pages(PDF, &doc).unwrap(), 100);
        assert_eq!(count_pages(PDF, &compressed_pdf(100, true)).unwrap(), 100);
    }

    #[test]
    fn xref_streams_and_object_streams_are_read() {
        assert_eq!(count_pages(PDF, &compressed_pdf(7, false)).unwrap(), 7);
        assert_eq!(count_pages(PDF, &compressed_pdf(12, true)).unwrap(), 12);
        // The fallback cannot see inside object streams, so this is the structured path.
        let doc = compressed_pdf(7, false);
        assert_eq!(page_objects_in(&doc, doc.len()), 0);
    }

    #[test]
    fn the_newest_incremental_update_wins() {
        let mut doc = classic_pdf(&page_tree(2));
        let previous = {
            let tail = String::from_utf8_lossy(&doc[doc.len() - 30..]).to_string();
            tail.split_whitespace()
                .skip_while(|w| *w != "startxref")
                .nth(1)
                .unwrap()
                .to_string()
        };
        // Objects so far: 1 catalog, 2 root, 3 node, 4-7 pages and contents. Add a page (8)
        // and rewrite the root and the node (2, 3) to hold it.
        let root = push_object(&mut doc, 2, "<< /Type /Pages /Kids [3 0 R] /Count 3 >>");
        let node = push_object(
            &mut doc,
            3,
            "<< /Type /Pages /Parent 2 0 R /Kids [4 0 R 6 0 R 8 0 R] /Count 3 >>",
        );
        let page = push_object(&mut doc, 8, "<< /Type /Page /Parent 3 0 R >>");
        let xref = doc.len();
        let table = format!(
            "xref\n0 1\n0000000000 65535 f \n{}{}trailer\n<< /Size 9 /Root 1 0 R /Prev {previous} >>\nstartxref\n{xref}\n%%EOF\n",
            xref_table(2, &[root, node]).trim_start_matches("xref\n"),
            xref_table(8, &[page]).trim_start_matches("xref\n"),
        );
        doc.extend_from_slice(table.as_bytes());
        assert_eq!(count_pages(PDF, &doc).unwrap(), 3);
    }

    #[test]
    fn a_broken_xref_falls_back_to_page_objects() {
        let mut doc = classic_pdf(&page_tree(4));
        let at = rfind(&doc, b"startxref").unwrap();
        doc.truncate(at);
        doc.extend_from_slice(b"startxref\n99999\n%%EOF\n");
        assert_eq!(count_pages(PDF, &doc).unwrap(), 4);
        // No startxref at all, and compact `/Type/Page` spelling.
        let doc = b"%PDF-1.4\n1 0 obj<</Type/Page>>endobj 2 0 obj<</Type /Pages>>endobj 3 0 obj<</Type\n/Page/Parent 2 0 R>>endobj";
        assert_eq!(count_pages(PDF, doc).unwrap(), 2);
    }

    #[test]
    fn uncountable_pdfs_are_malformed_not_free() {
        for doc in [
            b"".as_slice(),
            b"%PDF-1.4\nnothing here\n",
            b"%PDF-1.4\nstartxref\n0\n%%EOF",
            b"%PDF-1.4\nxref\n0 1\n0000000000 65535 f \ntrailer\n<< /Root 1 0 R /Prev 9 >>\nstartxref\n9\n%%EOF",
        ] {
            let error = count_pages(PDF, doc).unwrap_err();
            assert!(
                matches!(error, PageCountError::Malformed { format: "PDF", .. }),
                "{error}"
            );
        }
    }

    #[test]
    fn deep_nesting_and_reference_loops_are_refused() {
        let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        let looped = [
            "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
            "<< /Type /Pages /Count 3 0 R >>".to_string(),
            "4 0 R".to_string(),
            format!("3 0 R {deep}"),
        ];
        assert!(count_pages(PDF, &classic_pdf(&looped)).is_err());
    }

    #[test]
    fn the_count_may_be_an_indirect_object() {
        let objects = [
            "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
            "<< /Type /Pages /Kids [] /Count 3 0 R >>".to_string(),
            "42".to_string(),
        ];
        assert_eq!(count_pages(PDF, &classic_pdf(&objects)).unwrap(), 42);
    }

    #[test]
    fn files_are_read_at_offsets() {
        let dir = tempfile::tempdir().unwrap();
        // Large enough that the windows must grow and the fallback reads several chunks.
        for (name, doc) in [
            ("classic.pdf", classic_pdf(&page_tree(6000))),
            ("compressed.pdf", compressed_pdf(6000, true)),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, &doc).unwrap();
            assert_eq!(count_pages_in_file(PDF, &path).unwrap(), 6000, "{name}");
        }
        let mut broken = classic_pdf(&page_tree(6000));
        let at = rfind(&broken, b"startxref").unwrap();
        broken.truncate(at);
        let path = dir.path().join("broken.pdf");
        std::fs::write(&path, &broken).unwrap();
        assert!(broken.len() > 1 << 20);
        assert_eq!(count_pages_in_file(PDF, &path).unwrap(), 6000);
    }
}
