//! A reader of PostgreSQL's binary `COPY … TO STDOUT (FORMAT binary)`
//! stream, fed in chunks of any size (a row may span two chunks).
//!
//! The binary format carries integers, dates and instants as fixed-width
//! big-endian numbers and text as raw UTF-8, so nothing depends on the
//! session's `DateStyle`, `TimeZone` or text escaping. Layout: an 11-byte
//! signature, a 32-bit flags field and a header extension; then per row a
//! 16-bit field count (-1 ends the data), and per field a 32-bit length
//! (-1 for NULL) followed by that many bytes.

use std::ops::Range;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// PostgreSQL counts dates and instants from 2000-01-01.
const PG_EPOCH_DAYS_FROM_CE: i32 = 730_120;
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// Reads rows out of chunks of a binary COPY stream.
#[derive(Default)]
pub(super) struct BinaryCopy {
    /// Bytes received and not yet read (at most one partial row after a
    /// call to [`feed`](Self::feed)).
    pending: Vec<u8>,
    header_read: bool,
    ended: bool,
    fields: Vec<Option<Range<usize>>>,
}

/// One row: its fields, as byte ranges of the chunk being read.
pub(super) struct Row<'a> {
    data: &'a [u8],
    fields: &'a [Option<Range<usize>>],
}

fn be_i16(b: &[u8]) -> i16 {
    i16::from_be_bytes([b[0], b[1]])
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl BinaryCopy {
    /// Reads every complete row now available, passing each to `row`.
    /// Returns the number of rows read.
    ///
    /// # Errors
    /// Data that is not the binary COPY format, or an error of `row`.
    pub(super) fn feed(
        &mut self,
        chunk: &[u8],
        mut row: impl FnMut(&Row<'_>) -> Result<(), String>,
    ) -> Result<u64, String> {
        // Only the partial row left over from the last chunk is copied; the
        // rest is read in place.
        let mut joined = std::mem::take(&mut self.pending);
        let data: &[u8] = if joined.is_empty() {
            chunk
        } else {
            joined.extend_from_slice(chunk);
            &joined
        };
        let mut at = 0;
        let mut rows = 0;
        if !self.header_read {
            match header_len(data)? {
                Some(len) => {
                    at = len;
                    self.header_read = true;
                }
                None => {
                    self.pending = data.to_vec();
                    return Ok(0);
                }
            }
        }
        while !self.ended {
            let Some(end) = self.row_end(data, at)? else { break };
            if end == at + 2 {
                // The trailer: a field count of -1.
                self.ended = true;
            } else {
                row(&Row { data, fields: &self.fields })?;
                rows += 1;
            }
            at = end;
        }
        if self.ended && at < data.len() {
            return Err("data after the end of a COPY stream".into());
        }
        let rest = data[at..].to_vec();
        self.pending = rest;
        Ok(rows)
    }

    /// Where the row starting at `at` ends, with its field ranges noted;
    /// `None` when it is not complete yet.
    fn row_end(&mut self, data: &[u8], at: usize) -> Result<Option<usize>, String> {
        let Some(count) = data.get(at..at + 2) else { return Ok(None) };
        let count = be_i16(count);
        if count == -1 {
            return Ok(Some(at + 2));
        }
        let count = usize::try_from(count).map_err(|_| format!("bad COPY field count {count}"))?;
        self.fields.clear();
        let mut p = at + 2;
        for _ in 0..count {
            let Some(len) = data.get(p..p + 4) else { return Ok(None) };
            let len = be_i32(len);
            p += 4;
            if len == -1 {
                self.fields.push(None);
                continue;
            }
            let len = usize::try_from(len).map_err(|_| format!("bad COPY field length {len}"))?;
            if data.len() < p + len {
                return Ok(None);
            }
            self.fields.push(Some(p..p + len));
            p += len;
        }
        Ok(Some(p))
    }

    /// Checks that the stream ended where it should.
    ///
    /// # Errors
    /// A stream cut short.
    pub(super) fn finish(self) -> Result<(), String> {
        if self.ended && self.pending.is_empty() { Ok(()) } else { Err("the COPY stream ended early".into()) }
    }
}

/// The length of the header when `data` holds all of it.
fn header_len(data: &[u8]) -> Result<Option<usize>, String> {
    let fixed = SIGNATURE.len() + 8;
    if data.len() < fixed {
        return Ok(None);
    }
    if &data[..SIGNATURE.len()] != SIGNATURE {
        return Err("not a binary COPY stream".into());
    }
    let extension = usize::try_from(be_i32(&data[SIGNATURE.len() + 4..]))
        .map_err(|_| "bad COPY header extension length".to_owned())?;
    Ok((data.len() >= fixed + extension).then_some(fixed + extension))
}

impl Row<'_> {
    fn field(&self, i: usize) -> Result<Option<&[u8]>, String> {
        match self.fields.get(i) {
            Some(range) => Ok(range.clone().map(|r| &self.data[r])),
            None => Err(format!("COPY row without field {i}")),
        }
    }

    fn fixed<const N: usize>(&self, i: usize) -> Result<Option<[u8; N]>, String> {
        self.field(i)?
            .map(|b| b.try_into().map_err(|_| format!("COPY field {i}: {} bytes, not {N}", b.len())))
            .transpose()
    }

    fn required<T>(i: usize, value: Option<T>) -> Result<T, String> {
        value.ok_or_else(|| format!("COPY field {i} is NULL"))
    }

    /// A `bigint`.
    pub(super) fn int8(&self, i: usize) -> Result<i64, String> {
        Self::required(i, self.fixed::<8>(i)?.map(i64::from_be_bytes))
    }

    /// An `integer`.
    pub(super) fn int4(&self, i: usize) -> Result<i32, String> {
        Self::required(i, self.fixed::<4>(i)?.map(i32::from_be_bytes))
    }

    /// Text (`text`, `varchar`; also an enum stored as text).
    pub(super) fn text(&self, i: usize) -> Result<Option<&str>, String> {
        self.field(i)?.map(|b| std::str::from_utf8(b).map_err(|_| format!("COPY field {i} is not UTF-8"))).transpose()
    }

    /// A `date` as days from the common era (as chrono's
    /// `num_days_from_ce`); the infinities saturate.
    pub(super) fn date_days_from_ce(&self, i: usize) -> Result<Option<i32>, String> {
        Ok(self.fixed::<4>(i)?.map(|b| i32::from_be_bytes(b).saturating_add(PG_EPOCH_DAYS_FROM_CE)))
    }

    /// A `timestamptz` as microseconds since the Unix epoch; the infinities
    /// saturate.
    pub(super) fn timestamptz_unix_micros(&self, i: usize) -> Result<Option<i64>, String> {
        Ok(self.fixed::<8>(i)?.map(|b| i64::from_be_bytes(b).saturating_add(PG_EPOCH_UNIX_MICROS)))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::{BinaryCopy, SIGNATURE};

    /// A field as a test writes it.
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) enum Value {
        Int8(i64),
        Int4(i32),
        Text(String),
        Null,
    }

    /// The binary COPY stream of `rows`, as PostgreSQL writes it.
    pub(crate) fn encode(rows: &[Vec<Value>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        for row in rows {
            out.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for value in row {
                let bytes = match value {
                    Value::Int8(v) => v.to_be_bytes().to_vec(),
                    Value::Int4(v) => v.to_be_bytes().to_vec(),
                    Value::Text(s) => s.as_bytes().to_vec(),
                    Value::Null => {
                        out.extend_from_slice(&(-1i32).to_be_bytes());
                        continue;
                    }
                };
                out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                out.extend_from_slice(&bytes);
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn rows_read_back_whatever_the_chunks_are_cut_at() {
        let mut rng = ChaCha8Rng::seed_from_u64(16);
        // Int8, Int4, text, each column possibly NULL but the first.
        let kinds = b"84t";
        for round in 0..300 {
            let rows: Vec<Vec<Value>> = (0..rng.random_range(0..40))
                .map(|_| {
                    vec![
                        Value::Int8(rng.random()),
                        if rng.random_bool(0.2) { Value::Null } else { Value::Int4(rng.random()) },
                        if rng.random_bool(0.2) {
                            Value::Null
                        } else {
                            Value::Text("深圳\t\\n".chars().take(rng.random_range(0..6)).collect())
                        },
                    ]
                })
                .collect();
            let stream = encode(&rows);
            let mut cuts: Vec<usize> =
                (0..rng.random_range(0..8)).map(|_| rng.random_range(0..=stream.len())).collect();
            cuts.sort_unstable();
            let read = decode(&stream, &cuts, kinds);
            assert_eq!(read, Ok(rows), "round {round}, cuts {cuts:?}");
        }
    }

    /// The rows of a stream fed in pieces cut at `cuts`; `kinds` says how
    /// to read each column (`8`, `4`, text).
    fn decode(stream: &[u8], cuts: &[usize], kinds: &[u8]) -> Result<Vec<Vec<Value>>, String> {
        let mut reader = BinaryCopy::default();
        let mut rows = Vec::new();
        let mut start = 0;
        for end in cuts.iter().copied().chain([stream.len()]) {
            reader.feed(&stream[start..end], |row| {
                let mut values = Vec::new();
                for (i, kind) in kinds.iter().enumerate() {
                    let null = row.field(i)?.is_none();
                    values.push(match kind {
                        _ if null => Value::Null,
                        b'8' => Value::Int8(row.int8(i)?),
                        b'4' => Value::Int4(row.int4(i)?),
                        _ => Value::Text(row.text(i)?.unwrap_or_default().to_owned()),
                    });
                }
                rows.push(values);
                Ok(())
            })?;
            start = end;
        }
        reader.finish()?;
        Ok(rows)
    }

    #[test]
    fn a_stream_cut_short_or_not_copy_is_an_error() {
        let stream = encode(&[vec![Value::Int8(1), Value::Int8(2)]]);
        assert!(decode(&stream[..stream.len() - 2], &[], b"88").is_err());
        assert!(decode(b"id\tname\n1\tx\n..................", &[], b"88").is_err());
        let mut longer = stream.clone();
        longer.push(0);
        assert!(decode(&longer, &[], b"88").is_err());
    }
}
