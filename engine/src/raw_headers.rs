//! Reading record headers without trusting their names to be UTF-8.
//!
//! rdkafka's header iterator unwraps the UTF-8 conversion of each name, so one record with a
//! garbage header name (any non-Rust producer can write one) would panic the engine, and then
//! again at the same offset after every restart. These helpers read the same headers through
//! librdkafka and report such names instead.

use rdkafka::bindings as rdsys;
use rdkafka::message::BorrowedHeaders;
use rdkafka::types::RDKafkaRespErr;

/// Appends the headers whose names are UTF-8 to `out`; returns how many were left out.
pub fn read_headers<'a>(
    headers: &'a BorrowedHeaders,
    out: &mut impl Extend<(&'a str, Option<&'a [u8]>)>,
) -> usize {
    // `BorrowedHeaders` is rdkafka's zero-sized stand-in for the native headers: its address is
    // the `rd_kafka_headers_t` pointer (rdkafka casts it the same way).
    let native = headers as *const BorrowedHeaders as *const rdsys::rd_kafka_headers_t;
    // SAFETY: `native` points at headers owned by a live message (or `OwnedHeaders`) for 'a.
    let count = unsafe { rdsys::rd_kafka_header_cnt(native) };
    let mut invalid = 0;
    for index in 0..count {
        let mut name = std::ptr::null();
        let mut value = std::ptr::null();
        let mut size = 0;
        // SAFETY: as above; the out-pointers are valid locals.
        let error = unsafe {
            rdsys::rd_kafka_header_get_all(native, index, &mut name, &mut value, &mut size)
        };
        if error != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            invalid += 1;
            continue;
        }
        // SAFETY: librdkafka header names are NUL-terminated and live as long as the headers.
        let name: &'a std::ffi::CStr = unsafe { std::ffi::CStr::from_ptr(name) };
        match name.to_str() {
            Ok(name) => out.extend(std::iter::once((
                name,
                // SAFETY: `size` bytes at `value`, owned by the headers.
                (!value.is_null())
                    .then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }),
            ))),
            Err(_) => invalid += 1,
        }
    }
    invalid
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders};

    use super::*;

    #[test]
    fn raw_headers_read_names_and_values_as_rdkafka_does() {
        let owned = OwnedHeaders::new()
            .insert(Header {
                key: "a",
                value: Some(&b"1"[..]),
            })
            .insert(Header::<&[u8]> {
                key: "null",
                value: None,
            });
        let mut read: Vec<(&str, Option<&[u8]>)> = Vec::new();
        assert_eq!(read_headers(owned.as_borrowed(), &mut read), 0);
        assert_eq!(read, vec![("a", Some(&b"1"[..])), ("null", None)]);
    }
}
