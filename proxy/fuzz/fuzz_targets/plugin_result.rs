//! What a plugin returns for a batch (`plugin::wire::decode_result`): the
//! MessagePack result for the fixed batch of 3 events. The selector byte is
//! the fields the plugin asked for (`weir_fields`' bits, 255: all), the rest
//! the result. Checks besides "no panic": one outcome per event, a replacement
//! event only with `keep`, every replacement serializes (what the archive and
//! backends do) and encodes as the next plugin's batch; and while the plugin
//! may not change attributes, the fields it did not ask for stay the original's.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir::plugin::wire::{decode_result, encode_batch, Fields};
use weir::plugin::Verdict;
use weir_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::new(data) else {
        return;
    };
    let fields = Fields::from_bits(input.selector.into());
    let batch = weir_fuzz::events();
    let Ok(outcomes) = decode_result(input.payload, &batch, fields) else {
        return;
    };
    assert_eq!(outcomes.len(), batch.len(), "one outcome per event");
    let mut json = Vec::new();
    let mut kept = Vec::new();
    for (i, ((verdict, ev), orig)) in outcomes.into_iter().zip(&batch).enumerate() {
        let Some(ev) = ev else {
            continue;
        };
        assert_eq!(
            verdict,
            Verdict::Keep,
            "event {i}: a replacement with {verdict:?}"
        );
        json.clear();
        ev.write_json(&mut json);
        // Reserved attributes (`hostname`, `ddtags`...) set their fields only
        // when the plugin may change attributes; the fixed events hold none.
        if !fields.has(Fields::ATTRIBUTES) {
            let same = |bit: u32, changed: bool| fields.has(bit) || !changed;
            assert!(
                same(Fields::TIMESTAMP, ev.timestamp != orig.timestamp),
                "event {i}: timestamp"
            );
            assert!(
                same(Fields::MESSAGE, ev.message != orig.message),
                "event {i}: message"
            );
            assert!(same(Fields::HOST, ev.host != orig.host), "event {i}: host");
            assert!(
                same(Fields::SERVICE, ev.service != orig.service),
                "event {i}: service"
            );
            assert!(
                same(Fields::SOURCE, ev.source != orig.source),
                "event {i}: source"
            );
            assert!(
                same(Fields::STATUS, ev.status != orig.status),
                "event {i}: status"
            );
            assert!(same(Fields::TAGS, ev.tags != orig.tags), "event {i}: tags");
            assert_eq!(ev.attributes, orig.attributes, "event {i}: attributes");
        }
        kept.push(ev);
    }
    let _ = encode_batch(&kept, fields);
});
