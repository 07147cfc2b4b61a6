//! W3C Trace Context (`traceparent`) parsing.

/// The trace identity of an event: which trace and which span produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceContext {
    /// Parses a `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`). Returns `None` for any
    /// malformed value, an all-zero trace or span id, or version `ff`, as the W3C spec requires.
    ///
    /// Hex digits must be lower case. Version `00` must be exactly 55 characters; a higher version
    /// may carry further `-`-separated fields after the first 55 characters, which are ignored.
    pub fn parse_traceparent(value: &[u8]) -> Option<Self> {
        // Layout: VV-TTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTT-SSSSSSSSSSSSSSSS-FF
        //         0  3                                36               53
        const LEN: usize = 55;
        let head = value.get(..LEN)?;
        let rest = value.get(LEN..)?;

        let version = hex_byte(head.get(0..2)?)?;
        if version == 0xff {
            return None;
        }
        if version == 0x00 {
            if !rest.is_empty() {
                return None;
            }
        } else if rest.first().is_some_and(|&byte| byte != b'-') {
            return None;
        }
        if head.get(2) != Some(&b'-') || head.get(35) != Some(&b'-') || head.get(52) != Some(&b'-')
        {
            return None;
        }

        let mut trace_id = [0u8; 16];
        decode_hex(head.get(3..35)?, &mut trace_id)?;
        let mut span_id = [0u8; 8];
        decode_hex(head.get(36..52)?, &mut span_id)?;
        let flags = hex_byte(head.get(53..55)?)?;

        if trace_id == [0u8; 16] || span_id == [0u8; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// Lower-case hex of the trace id (32 characters).
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// Lower-case hex of the span id (16 characters).
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }
}

/// The value of one lower-case hex digit.
fn hex_digit(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// Two lower-case hex digits as a byte.
fn hex_byte(pair: &[u8]) -> Option<u8> {
    match pair {
        [high, low] => Some((hex_digit(*high)? << 4) | hex_digit(*low)?),
        _ => None,
    }
}

/// Decodes `text` (exactly twice as long as `out`) into `out`.
fn decode_hex(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = hex_byte(pair)?;
    }
    Some(())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 0x0f) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Option<TraceContext> {
        TraceContext::parse_traceparent(text.as_bytes())
    }

    #[test]
    fn parses_the_spec_examples() {
        let sampled = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(sampled.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sampled.span_id_hex(), "00f067aa0ba902b7");
        assert_eq!(sampled.flags, 0x01);
        assert_eq!(sampled.trace_id[0], 0x4b);
        assert_eq!(sampled.trace_id[15], 0x36);
        assert_eq!(
            sampled.span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );

        let unsampled = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert_eq!(unsampled.flags, 0x00);
        assert_eq!(unsampled.trace_id, sampled.trace_id);
    }

    #[test]
    fn keeps_every_flag_bit() {
        let context = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff").unwrap();
        assert_eq!(context.flags, 0xff);
    }

    #[test]
    fn rejects_invalid_ids_and_versions() {
        // All-zero trace id or span id.
        assert_eq!(
            parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            parse("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            None
        );
        // Version ff is forbidden.
        assert_eq!(
            parse("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None
        );
        // Upper-case hex anywhere.
        assert_eq!(
            parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01"),
            None
        );
        assert_eq!(
            parse("0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A"),
            None
        );
        // Non-hex characters.
        assert_eq!(
            parse("0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            parse("00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x"),
            None
        );
    }

    #[test]
    fn rejects_wrong_lengths_and_separators() {
        assert_eq!(parse(""), None);
        assert_eq!(parse("00"), None);
        // One character short, one too long, for version 00.
        assert_eq!(
            parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"),
            None
        );
        assert_eq!(
            parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-"),
            None
        );
        assert_eq!(
            parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-ab"),
            None
        );
        // Wrong separators.
        assert_eq!(
            parse("00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            parse("00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01"),
            None
        );
        // Field boundaries shifted.
        assert_eq!(
            parse("00-4bf92f3577b34da6a3ce929d0e0e47360-0f067aa0ba902b7-01"),
            None
        );
        // Surrounding whitespace is not trimmed.
        assert_eq!(
            parse(" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 "),
            None
        );
    }

    #[test]
    fn higher_versions_may_carry_more_fields() {
        let base = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = parse(base).unwrap();
        assert_eq!(parsed.flags, 0x01);
        assert_eq!(
            parse(&format!("{base}-what-the-future-will-be-like")),
            Some(parsed)
        );
        // Anything after the first 55 characters must start with a dash.
        assert_eq!(parse(&format!("{base}x")), None);
        assert_eq!(parse(&format!("{base}0")), None);
    }

    #[test]
    fn non_ascii_input_is_rejected_without_panicking() {
        let mut bytes = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec();
        bytes[10] = 0xc3;
        assert_eq!(TraceContext::parse_traceparent(&bytes), None);
        assert_eq!(
            TraceContext::parse_traceparent("é".repeat(40).as_bytes()),
            None
        );
    }
}
