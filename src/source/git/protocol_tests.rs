//! Tests of the protocol v2 parsers and of the fetch response's bounds.

use super::*;

fn pkt(s: &[u8]) -> Vec<u8> {
    let mut v = format!("{:04x}", s.len() + 4).into_bytes();
    v.extend_from_slice(s);
    v
}

const A: &str = "1111111111111111111111111111111111111111";
const B: &str = "2222222222222222222222222222222222222222";

#[test]
fn capabilities_v2_with_and_without_service_line() {
    let mut body = Vec::new();
    for l in [
        "version 2\n",
        "agent=git/2.47\n",
        "ls-refs=unborn\n",
        "fetch=shallow wait-for-done filter\n",
        "object-info\n",
        "object-format=sha1\n",
    ] {
        body.extend(pkt(l.as_bytes()));
    }
    body.extend_from_slice(b"0000");
    let c = parse_capabilities(&body).unwrap();
    assert!(c.supports_filter() && c.supports_shallow() && c.object_info);
    let mut prefixed = pkt(b"# service=git-upload-pack\n");
    prefixed.extend_from_slice(b"0000");
    prefixed.extend(body);
    assert_eq!(parse_capabilities(&prefixed).unwrap(), c);
}

#[test]
fn capabilities_rejects_v0_and_garbage() {
    let mut v0 = pkt(b"# service=git-upload-pack\n");
    v0.extend_from_slice(b"0000");
    v0.extend(pkt(format!("{A} HEAD\0multi_ack\n").as_bytes()));
    v0.extend_from_slice(b"0000");
    let e = parse_capabilities(&v0).unwrap_err().to_string();
    assert!(e.contains("protocol v2"), "{e}");
    assert!(parse_capabilities(b"<html>hello</html>").is_err());
    assert!(parse_capabilities(b"00").is_err());
    assert!(parse_capabilities(b"").is_err());
}

#[test]
fn ls_refs_parse_and_select() {
    let mut body = Vec::new();
    body.extend(pkt(
        format!("{A} HEAD symref-target:refs/heads/main\n").as_bytes()
    ));
    body.extend(pkt(format!("{A} refs/heads/main\n").as_bytes()));
    body.extend(pkt(format!("{B} refs/tags/v1 peeled:{A}\n").as_bytes()));
    body.extend(pkt(b"unborn refs/heads/empty\n"));
    body.extend_from_slice(b"0000");
    let refs = parse_ls_refs(&body).unwrap();
    assert_eq!(refs.len(), 3);
    assert_eq!(select_ref(&refs, None).unwrap().target().to_string(), A);
    assert_eq!(
        select_ref(&refs, Some("main")).unwrap().name,
        "refs/heads/main"
    );
    let tag = select_ref(&refs, Some("v1")).unwrap();
    assert_eq!(tag.target().to_string(), A);
    assert!(select_ref(&refs, Some("nope")).is_none());
    assert!(parse_ls_refs(&pkt(b"zz HEAD\n")).is_err());
    assert!(
        parse_ls_refs(&pkt(b"ERR access denied\n"))
            .unwrap_err()
            .0
            .contains("access denied")
    );
}

#[test]
fn request_encoding() {
    let caps = Capabilities {
        object_format: Some("sha1".into()),
        ..Default::default()
    };
    let r = command_request("ls-refs", &caps, &["peel".into()]);
    let s = String::from_utf8(r).unwrap();
    assert!(s.starts_with("0014command=ls-refs\n"));
    assert!(s.contains("0017object-format=sha1\n0001"));
    assert!(s.ends_with("0009peel\n0000"));
}

#[test]
fn fetch_response_split_at_every_byte() {
    let mut body = Vec::new();
    body.extend(pkt(b"shallow-info\n"));
    body.extend(pkt(format!("shallow {A}\n").as_bytes()));
    body.extend_from_slice(b"0001");
    body.extend(pkt(b"packfile\n"));
    body.extend(pkt(b"\x02counting objects\n"));
    body.extend(pkt(b"\x01PACK-part-1"));
    body.extend(pkt(b"\x01-part-2"));
    body.extend_from_slice(b"0000");
    for split in 1..body.len() {
        let mut p = FetchResponseParser::new();
        let mut got = Vec::new();
        let mut sink = |d: &[u8]| {
            got.extend_from_slice(d);
            Ok(())
        };
        p.feed(&body[..split], &mut sink).unwrap();
        p.feed(&body[split..], &mut sink).unwrap();
        p.finish().unwrap();
        assert_eq!(got, b"PACK-part-1-part-2");
        assert_eq!(p.shallow.len(), 1);
    }
}

#[test]
fn fetch_response_errors() {
    let mut p = FetchResponseParser::new();
    let mut sink = |_: &[u8]| Ok(());
    let mut body = pkt(b"packfile\n");
    body.extend(pkt(b"\x03upload-pack: not our ref\n"));
    assert!(
        p.feed(&body, &mut sink)
            .unwrap_err()
            .0
            .contains("not our ref")
    );

    let mut p = FetchResponseParser::new();
    p.feed(&pkt(b"packfile\n"), &mut sink).unwrap();
    assert!(p.finish().unwrap_err().0.contains("ended early"));

    let mut p = FetchResponseParser::new();
    assert!(p.feed(b"zzzz", &mut sink).is_err());

    let mut p = FetchResponseParser::new();
    assert!(p.feed(b"0000", &mut sink).is_err());
}

#[test]
fn fetch_response_bounds() {
    let mut sink = |_: &[u8]| Ok(());
    // Bytes after the final flush: an error at once, in the same chunk
    // or a later one, and nothing of them is kept.
    let mut body = pkt(b"packfile\n");
    body.extend(pkt(b"\x01PACK"));
    body.extend_from_slice(b"0000");
    let mut p = FetchResponseParser::new();
    p.feed(&body, &mut sink).unwrap();
    p.finish().unwrap();
    assert!(
        p.feed(b"x", &mut sink)
            .unwrap_err()
            .0
            .contains("after the end")
    );
    assert!(p.feed(b"", &mut sink).is_err());
    assert!(p.finish().is_err());
    let mut p = FetchResponseParser::new();
    let mut with_tail = body.clone();
    with_tail.extend(pkt(b"\x01more"));
    assert!(p.feed(&with_tail, &mut sink).is_err());
    assert!(p.buf.is_empty() && p.finish().is_err());

    // Progress: the last few KiB kept, and a limit in all.
    let mut p = FetchResponseParser::new();
    p.feed(&pkt(b"packfile\n"), &mut sink).unwrap();
    let line = pkt(&[&b"\x02"[..], &[b'p'; 1000]].concat());
    let mut fed = 0u64;
    let err = loop {
        match p.feed(&line, &mut sink) {
            Ok(()) => fed += 1000,
            Err(e) => break e,
        }
        assert!(p.progress.iter().map(String::len).sum::<usize>() <= PROGRESS_KEEP);
        assert!(p.buf.len() < 65536);
    };
    assert!(err.0.contains("progress"), "{err}");
    assert!(fed <= MAX_PROGRESS && fed + 1000 > MAX_PROGRESS, "{fed}");

    // Endless lines before the packfile section.
    let mut p = FetchResponseParser::new();
    let ack = pkt(&[b'a'; 60000]);
    let err = loop {
        if let Err(e) = p.feed(&ack, &mut sink) {
            break e;
        }
    };
    assert!(err.0.contains("before its packfile"), "{err}");

    // A long fatal message is cut.
    let mut p = FetchResponseParser::new();
    let mut body = pkt(b"packfile\n");
    body.extend(pkt(&[&b"\x03"[..], &[b'e'; 60000]].concat()));
    assert!(p.feed(&body, &mut sink).unwrap_err().0.len() < 2 * MESSAGE_MAX);
}

#[test]
fn object_info_parse() {
    let mut body = pkt(b"size\n");
    body.extend(pkt(format!("{A} 1234\n").as_bytes()));
    body.extend(pkt(format!("{B} \n").as_bytes()));
    body.extend_from_slice(b"0000");
    let v = parse_object_info(&body).unwrap();
    assert_eq!(v[0].1, Some(1234));
    assert_eq!(v[1].1, None);
    assert!(parse_object_info(&pkt(b"nonsense\n")).is_err());
}
