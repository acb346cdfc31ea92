//! The reader against bodies of every shape, chunked every way.
use super::*;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// Feeds `body` in chunks of `step` bytes.
fn read(body: &[u8], step: usize, limits: Limits) -> Result<(Summary, Vec<String>), ReadError> {
    block_on(async {
        let mut sink = Collect::default();
        let mut r = CollectionReader::new(limits);
        for chunk in body.chunks(step.max(1)) {
            r.feed(chunk, &mut sink).await?;
        }
        let s = r.finish()?;
        Ok((s, sink.0.iter().map(|v| v.get().to_owned()).collect()))
    })
}

const BODY: &str = r#" {"@odata.context":"https://x/$metadata#Alerts","@odata.count":3,"value" : [ {"id":"a","t":"x\"]}{"} , {"id":"b","n":[1,{"k":"[\\"}]},[],"s",12.5e3,null,true ] ,"@odata.nextLink":"https://x/next?$skip=3\u0026a=\"b\"","extra":{"value":[1]} } "#;

#[test]
fn items_come_out_exactly_as_sent_whatever_the_chunking() {
    let expected = vec![
        r#"{"id":"a","t":"x\"]}{"}"#.to_owned(),
        r#"{"id":"b","n":[1,{"k":"[\\"}]}"#.to_owned(),
        "[]".to_owned(),
        r#""s""#.to_owned(),
        "12.5e3".to_owned(),
        "null".to_owned(),
        "true".to_owned(),
    ];
    for step in [1, 2, 3, 7, 64, BODY.len()] {
        let (s, items) = read(BODY.as_bytes(), step, Limits::default()).unwrap();
        assert_eq!(items, expected, "chunks of {step}");
        assert_eq!(s.items, 7);
        assert_eq!(
            s.next_link.as_deref(),
            Some("https://x/next?$skip=3&a=\"b\""),
            "chunks of {step}"
        );
    }
}

#[test]
fn the_next_link_may_come_before_value_and_may_be_absent_or_null() {
    let (s, items) = read(
        br#"{"@odata.nextLink":"https://x/2","value":[{"id":"a"}]}"#,
        5,
        Limits::default(),
    )
    .unwrap();
    assert_eq!(s.next_link.as_deref(), Some("https://x/2"));
    assert_eq!(items, vec![r#"{"id":"a"}"#]);
    let (s, items) = read(
        br#"{"value":[],"@odata.nextLink":null}"#,
        4,
        Limits::default(),
    )
    .unwrap();
    assert_eq!((s.items, s.next_link, items.len()), (0, None, 0));
}

#[test]
fn a_body_or_an_item_past_its_limit_is_refused_at_the_limit() {
    let limits = Limits {
        max_body: 1_000,
        max_item: 100,
    };
    let mut blank = b"{\"value\":[".to_vec();
    blank.extend(std::iter::repeat_n(b' ', 5_000));
    assert_eq!(
        read(&blank, 64, limits).unwrap_err(),
        ReadError::BodyTooLarge { limit: 1_000 }
    );
    let big = format!(
        r#"{{"value":[{{"id":"a"}},{{"id":"{}"}}]}}"#,
        "x".repeat(200)
    );
    assert_eq!(
        read(big.as_bytes(), 16, limits).unwrap_err(),
        ReadError::ItemTooLarge {
            limit: 100,
            index: 1
        }
    );
    // a long next link is an item too
    let link = format!(r#"{{"value":[],"@odata.nextLink":"{}"}}"#, "y".repeat(200));
    assert!(matches!(
        read(link.as_bytes(), 16, limits).unwrap_err(),
        ReadError::ItemTooLarge { .. }
    ));
}

#[test]
fn a_broken_or_cut_body_is_an_error_not_a_short_page() {
    for body in [
        &br#"{"value":[{"id":"a"},{"id":"#[..],
        br#"{"value":[{"id":"a"}]"#,
        br#""#,
    ] {
        assert_eq!(
            read(body, 3, Limits::default()).unwrap_err(),
            ReadError::Truncated,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    for body in [
        &br#"[{"id":"a"}]"#[..],
        br#"{"value":{"id":"a"}}"#,
        br#"{"value":[{"id":"a"}]} x"#,
        br#"{"value":[{"id":"a"} {"id":"b"}]}"#,
        br#"{"value":[{"id":"a",}]}"#,
    ] {
        assert!(
            matches!(
                read(body, 2, Limits::default()),
                Err(ReadError::Malformed(_))
            ),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn an_object_without_value_or_with_error_is_not_an_empty_page() {
    for body in [
        &b"{}"[..],
        br#"{"error":{"code":"GatewayTimeout","message":"upstream"}}"#,
        br#"{"value":[],"error":{"code":"x"}}"#,
        br#"{"@odata.context":"x","values":[]}"#,
    ] {
        let text = String::from_utf8_lossy(body).into_owned();
        match read(body, 3, Limits::default()) {
            Err(ReadError::NotACollection { head, .. }) => {
                assert_eq!(head, text, "the error quotes the body's first bytes")
            }
            other => panic!("{text}: {other:?}"),
        }
    }
    let long = format!(r#"{{"error":"{}"}}"#, "x".repeat(1_000));
    match read(long.as_bytes(), 7, Limits::default()) {
        Err(ReadError::NotACollection { head, .. }) => assert_eq!(head.len(), HEAD),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        read(br#"{"value":[]}"#, 1, Limits::default())
            .unwrap()
            .0
            .items,
        0
    );
}

#[test]
fn the_reader_holds_one_item_not_the_body() {
    // 2,000 items of 1 KB: the buffer never grows past one item
    let item = format!(r#"{{"id":"{}"}}"#, "z".repeat(1_000));
    let body = format!("{{\"value\":[{}]}}", vec![item.as_str(); 2_000].join(","));
    block_on(async {
        let mut r = CollectionReader::new(Limits::default());
        let mut sink = Count(0);
        for chunk in body.as_bytes().chunks(8_192) {
            r.feed(chunk, &mut sink).await.unwrap();
            assert!(r.buf.capacity() < 64 << 10, "{}", r.buf.capacity());
        }
        assert_eq!(r.finish().unwrap().items, 2_000);
        assert_eq!(sink.0, 2_000);
    });
}

struct Count(usize);
impl ItemSink for Count {
    fn begin(&mut self) {}
    fn item<'a>(&'a mut self, _: &'a RawValue) -> BoxFuture<'a, Result<(), Abort>> {
        self.0 += 1;
        Box::pin(async { Ok(()) })
    }
}
