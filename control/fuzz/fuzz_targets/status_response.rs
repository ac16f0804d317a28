//! What `dsrgate status` reads back from the address it is given, which may be anything
//! listening there: the bytes until the server closed. Parsing the HTTP response, decoding
//! the status JSON and rendering the tables must return (with an error or the tables),
//! never panic, and a body is never longer than the bytes received. An input that starts
//! with `{` is taken as the JSON body of a 200 answer, so that the fuzzer spends its time
//! on the status document and the tables rather than on finding a valid HTTP head first.
#![no_main]

use control::{api, status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let wrapped;
    let data = if data.first() == Some(&b'{') {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", data.len());
        wrapped = [head.as_bytes(), data].concat();
        &wrapped[..]
    } else {
        data
    };
    let Ok(response) = api::parse_response(data) else {
        return;
    };
    assert!(response.body.len() <= data.len());
    if let Some(length) = response
        .header("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        assert_eq!(response.body.len(), length);
    }
    if let Ok(s) = status::decode(&response) {
        let _ = status::render(&s);
    }
});
