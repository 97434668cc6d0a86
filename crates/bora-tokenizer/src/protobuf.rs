//! A minimal reader for SentencePiece's `ModelProto`.
//!
//! Hand-written rather than generated with prost: bora needs five fields of three messages, and
//! a 100-line wire-format walker costs less compile time and fewer dependencies than a protobuf
//! toolchain. Every length is checked against the bytes that remain, so a truncated or corrupt
//! file yields an error instead of a panic or a large allocation. Field numbers are those of
//! `sentencepiece_model.proto`.

/// What bora reads from a `.model` file.
#[derive(Debug)]
pub(crate) struct ModelProto {
    pub pieces: Vec<Piece>,
    pub trainer: TrainerSpec,
    pub normalizer: NormalizerSpec,
}

#[derive(Debug)]
pub(crate) struct Piece {
    pub piece: String,
    pub score: f32,
    /// `ModelProto.SentencePiece.Type`: 1 normal, 2 unknown, 3 control, 4 user-defined,
    /// 5 unused, 6 byte.
    pub kind: u64,
}

#[derive(Debug)]
pub(crate) struct TrainerSpec {
    /// 1 unigram, 2 BPE, 3 word, 4 char.
    pub model_type: u64,
    pub byte_fallback: bool,
    pub treat_whitespace_as_suffix: bool,
    pub unk_surface: String,
    pub bos_piece: String,
    pub eos_piece: String,
}

#[derive(Debug)]
pub(crate) struct NormalizerSpec {
    pub name: String,
    pub precompiled_charsmap_len: usize,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
}

/// A wire-format error: the byte offset and what was wrong there.
#[derive(Debug)]
pub(crate) struct WireError {
    pub offset: usize,
    pub what: String,
}

enum Value<'a> {
    Varint(u64),
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
    Other,
}

/// Iterates the (field number, value) pairs of one message.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf` in the file, for error messages.
    base: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Fields { buf, pos: 0, base }
    }

    fn error(&self, what: &str) -> WireError {
        WireError {
            offset: self.base + self.pos,
            what: what.to_string(),
        }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(self.error("truncated varint"));
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(self.error("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], WireError> {
        let remaining = self.buf.len() - self.pos;
        if n > remaining as u64 {
            return Err(self.error(&format!(
                "field of {n} bytes but only {remaining} remain (truncated file?)"
            )));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    /// The next field, with the file offset of its value.
    fn next_field(&mut self) -> Result<Option<(u64, usize, Value<'a>)>, WireError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let offset = self.base + self.pos;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Other
            }
            2 => {
                let n = self.varint()?;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32([b[0], b[1], b[2], b[3]])
            }
            wire => return Err(self.error(&format!("unsupported wire type {wire}"))),
        };
        Ok(Some((key >> 3, offset, value)))
    }
}

fn string(bytes: &[u8], offset: usize, field: &str) -> Result<String, WireError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| WireError {
        offset,
        what: format!("{field} is not valid UTF-8"),
    })
}

fn expect_bytes<'a>(value: Value<'a>, offset: usize, field: &str) -> Result<&'a [u8], WireError> {
    match value {
        Value::Bytes(b) => Ok(b),
        _ => Err(WireError {
            offset,
            what: format!("{field} has the wrong wire type"),
        }),
    }
}

fn expect_varint(value: Value<'_>, offset: usize, field: &str) -> Result<u64, WireError> {
    match value {
        Value::Varint(v) => Ok(v),
        _ => Err(WireError {
            offset,
            what: format!("{field} has the wrong wire type"),
        }),
    }
}

fn parse_piece(buf: &[u8], base: usize) -> Result<Piece, WireError> {
    let mut piece = Piece {
        piece: String::new(),
        score: 0.0,
        kind: 1,
    };
    let mut fields = Fields::new(buf, base);
    while let Some((field, offset, value)) = fields.next_field()? {
        match (field, value) {
            (1, v) => piece.piece = string(expect_bytes(v, offset, "piece")?, offset, "piece")?,
            (2, Value::Fixed32(b)) => piece.score = f32::from_le_bytes(b),
            (2, _) => {
                return Err(WireError {
                    offset,
                    what: "score is not a float".into(),
                })
            }
            (3, v) => piece.kind = expect_varint(v, offset, "type")?,
            _ => {}
        }
    }
    Ok(piece)
}

fn parse_trainer(buf: &[u8], base: usize) -> Result<TrainerSpec, WireError> {
    let mut spec = TrainerSpec {
        model_type: 1,
        byte_fallback: false,
        treat_whitespace_as_suffix: false,
        unk_surface: " \u{2047} ".into(),
        bos_piece: "<s>".into(),
        eos_piece: "</s>".into(),
    };
    let mut fields = Fields::new(buf, base);
    while let Some((field, offset, value)) = fields.next_field()? {
        match field {
            3 => spec.model_type = expect_varint(value, offset, "model_type")?,
            24 => {
                spec.treat_whitespace_as_suffix =
                    expect_varint(value, offset, "treat_whitespace_as_suffix")? != 0
            }
            35 => spec.byte_fallback = expect_varint(value, offset, "byte_fallback")? != 0,
            44 => {
                spec.unk_surface = string(
                    expect_bytes(value, offset, "unk_surface")?,
                    offset,
                    "unk_surface",
                )?
            }
            46 => {
                spec.bos_piece = string(
                    expect_bytes(value, offset, "bos_piece")?,
                    offset,
                    "bos_piece",
                )?
            }
            47 => {
                spec.eos_piece = string(
                    expect_bytes(value, offset, "eos_piece")?,
                    offset,
                    "eos_piece",
                )?
            }
            _ => {}
        }
    }
    Ok(spec)
}

fn parse_normalizer(buf: &[u8], base: usize) -> Result<NormalizerSpec, WireError> {
    let mut spec = NormalizerSpec {
        name: String::new(),
        precompiled_charsmap_len: 0,
        add_dummy_prefix: true,
        remove_extra_whitespaces: true,
        escape_whitespaces: true,
    };
    let mut fields = Fields::new(buf, base);
    while let Some((field, offset, value)) = fields.next_field()? {
        match field {
            1 => spec.name = string(expect_bytes(value, offset, "name")?, offset, "name")?,
            2 => spec.precompiled_charsmap_len = expect_bytes(value, offset, "charsmap")?.len(),
            3 => spec.add_dummy_prefix = expect_varint(value, offset, "add_dummy_prefix")? != 0,
            4 => {
                spec.remove_extra_whitespaces =
                    expect_varint(value, offset, "remove_extra_whitespaces")? != 0
            }
            5 => spec.escape_whitespaces = expect_varint(value, offset, "escape_whitespaces")? != 0,
            _ => {}
        }
    }
    Ok(spec)
}

/// Parses a serialized `ModelProto`.
pub(crate) fn parse_model(buf: &[u8]) -> Result<ModelProto, WireError> {
    let mut pieces = Vec::new();
    let mut trainer = None;
    let mut normalizer = None;
    let mut fields = Fields::new(buf, 0);
    while let Some((field, offset, value)) = fields.next_field()? {
        match field {
            1 => pieces.push(parse_piece(expect_bytes(value, offset, "pieces")?, offset)?),
            2 => {
                trainer = Some(parse_trainer(
                    expect_bytes(value, offset, "trainer_spec")?,
                    offset,
                )?)
            }
            3 => {
                normalizer = Some(parse_normalizer(
                    expect_bytes(value, offset, "normalizer_spec")?,
                    offset,
                )?)
            }
            _ => {}
        }
    }
    let missing = |what: &str| WireError {
        offset: buf.len(),
        what: format!("no {what} (not a SentencePiece model?)"),
    };
    Ok(ModelProto {
        pieces,
        trainer: trainer.ok_or_else(|| missing("trainer_spec"))?,
        normalizer: normalizer.ok_or_else(|| missing("normalizer_spec"))?,
    })
}
