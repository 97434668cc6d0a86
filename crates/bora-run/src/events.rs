//! TensorBoard's event file format, written by hand: TFRecord framing around `Event`
//! protobufs with only the fields scalars need, so bora needs no protobuf dependency.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch, the event's `wall_time`.
pub fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Writes TensorBoard's record format: TFRecord framing around `Event` protobufs, encoded by
/// hand for the four fields scalars need, so bora needs no protobuf dependency.
pub struct EventWriter<W: Write> {
    out: W,
}

impl<W: Write> EventWriter<W> {
    /// Starts a file with the `brain.Event:2` version record readers look for first.
    pub fn new(out: W, wall_time: f64) -> std::io::Result<Self> {
        let mut writer = Self { out };
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time);
        put_bytes(&mut event, 3, b"brain.Event:2");
        writer.record(&event)?;
        Ok(writer)
    }

    /// One scalar event, flushed so a live TensorBoard sees it at once.
    pub fn scalar(
        &mut self,
        tag: &str,
        value: f32,
        step: i64,
        wall_time: f64,
    ) -> std::io::Result<()> {
        let mut value_msg = Vec::new();
        put_bytes(&mut value_msg, 1, tag.as_bytes());
        // proto3 leaves out fields holding their default (+0.0); readers read them as 0.
        if value.to_bits() != 0 {
            put_key(&mut value_msg, 2, WIRE_FIXED32);
            value_msg.extend_from_slice(&value.to_le_bytes());
        }
        let mut summary = Vec::new();
        put_bytes(&mut summary, 1, &value_msg);
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time);
        if step != 0 {
            put_key(&mut event, 2, WIRE_VARINT);
            put_varint(&mut event, step as u64);
        }
        put_bytes(&mut event, 5, &summary);
        self.record(&event)?;
        self.out.flush()
    }

    /// TFRecord framing: length, masked CRC of the length, payload, masked CRC of the
    /// payload, so a reader can tell a torn tail from data.
    fn record(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let len = (payload.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(payload.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        rec.extend_from_slice(payload);
        rec.extend_from_slice(&masked_crc32c(payload).to_le_bytes());
        self.out.write_all(&rec)
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

fn put_double(buf: &mut Vec<u8>, field: u32, v: f64) {
    if v.to_bits() != 0 {
        put_key(buf, field, WIRE_FIXED64);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(buf, field, WIRE_LEN);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven.
pub fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// TFRecord's masking, which keeps a CRC stored inside CRC'd data from looking like a
/// valid checksum of itself.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    crc32c(bytes).rotate_right(15).wrapping_add(0xA282_EAD8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_steps_beyond_one_byte() {
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xAC, 0x02]);
        out.clear();
        put_varint(&mut out, u64::MAX);
        assert_eq!(out.len(), 10);
        assert_eq!(out[9], 0x01);
    }
}
