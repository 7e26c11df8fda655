//! The socket protocol decoder: any frame header and payload a client can send is answered with
//! a value or a `ProtoError`, never a panic; what decodes re-encodes to a payload that decodes to
//! the same value.
#![no_main]

use clu_proto::protocol::{frame_len, Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.get(..4) {
        let _ = frame_len([header[0], header[1], header[2], header[3]]);
    }
    // `encode` makes a whole frame: its payload follows the 4-byte header.
    if let Ok(req) = Request::decode(data) {
        let frame = req.encode();
        assert_eq!(frame_len([frame[0], frame[1], frame[2], frame[3]]), Ok(frame.len() - 4));
        assert_eq!(Request::decode(&frame[4..]).as_ref(), Ok(&req));
    }
    if let Ok(resp) = Response::decode(data) {
        let frame = resp.encode();
        assert_eq!(Response::decode(&frame[4..]).as_ref(), Ok(&resp));
    }
});
