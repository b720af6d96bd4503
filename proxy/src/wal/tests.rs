use super::format::{RecordHeader, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::position::{Position, PositionFile};
use super::*;

fn small() -> WalOptions {
    WalOptions {
        segment_bytes: 256,
        ..WalOptions::default()
    }
}

fn payload(i: u32) -> Vec<u8> {
    format!("record number {i}").into_bytes()
}

/// Record `i` carries `i % 3 + 1` events.
fn events(i: u32) -> u32 {
    i % 3 + 1
}

async fn append_n(wal: &Wal, from: u32, n: u32) -> Vec<SeqRange> {
    let mut ranges = Vec::new();
    for i in from..from + n {
        ranges.push(wal.append(payload(i), events(i), 0).await.unwrap());
    }
    ranges
}

fn read_all(r: &mut Reader) -> Vec<Record> {
    let mut out = Vec::new();
    while let Some(rec) = r.read().unwrap() {
        out.push(rec);
    }
    out
}

fn segments(dir: &Path) -> Vec<u64> {
    segment::list(&dir.join("seg")).unwrap()
}

fn seg_file(dir: &Path, base: u64) -> PathBuf {
    segment::segment_path(&dir.join("seg"), base)
}

/// (offset, header) of every record of an undamaged segment file.
fn records_in(path: &Path) -> Vec<(usize, RecordHeader)> {
    let bytes = std::fs::read(path).unwrap();
    let mut off = SEGMENT_HEADER_LEN;
    let mut out = Vec::new();
    while off < bytes.len() {
        let h = RecordHeader::decode(&bytes[off..], u32::MAX).unwrap();
        out.push((off, h));
        off += h.record_len() as usize;
    }
    out
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn round_trip_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small()).unwrap();
    let ranges = append_n(&wal, 0, 20).await;
    assert_eq!(ranges[0].first, 1);
    for w in ranges.windows(2) {
        assert_eq!(w[0].end, w[1].first);
    }
    assert!(
        segments(dir.path()).len() >= 4,
        "{:?}",
        segments(dir.path())
    );
    let mut r = wal.reader("route").unwrap();
    let got = read_all(&mut r);
    assert_eq!(got.len(), 20);
    for (i, (rec, range)) in got.iter().zip(&ranges).enumerate() {
        assert_eq!(rec.payload, payload(i as u32));
        assert_eq!((rec.first_seq, rec.end_seq()), (range.first, range.end));
        assert_eq!(rec.lost_before, 0);
    }
    // More appends are read where the reader stopped.
    append_n(&wal, 20, 3).await;
    let more = read_all(&mut r);
    assert_eq!(
        more.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
        vec![payload(20), payload(21), payload(22)]
    );
    assert_eq!(r.stats(), ReaderStats::default());
}

/// Appends that arrive while the writer is busy (held here, as behind a slow
/// sync) go into the next group together: one write and one sync for all.
#[tokio::test]
async fn group_commit_answers_every_concurrent_append() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path(), WalOptions::default()).unwrap());
    let seg_dir = dir.path().join("seg");
    writer::HELD.lock().unwrap().push(seg_dir.clone());
    let waits: Vec<_> = (0..200u32)
        .map(|i| wal.submit(payload(i), events(i), 0).unwrap())
        .collect();
    writer::HELD.lock().unwrap().retain(|d| d != &seg_dir);
    let mut ranges = Vec::new();
    for w in waits {
        ranges.push(w.await.unwrap().unwrap());
    }
    ranges.sort_by_key(|r| r.first);
    assert_eq!(ranges[0].first, 1);
    for w in ranges.windows(2) {
        assert_eq!(w[0].end, w[1].first, "ranges tile the seqs");
    }
    let expected_end = 1 + (0..200).map(|i| u64::from(events(i))).sum::<u64>();
    assert_eq!(ranges.last().unwrap().end, expected_end);
    let stats = wal.writer_stats();
    let groups = stats.groups.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        stats.records.load(std::sync::atomic::Ordering::Relaxed),
        200
    );
    assert_eq!(groups, 1, "one write and sync for 200 waiting appends");
    assert_eq!(wal.durable().borrow().next_seq, expected_end);
    let mut r = wal.reader("archive").unwrap();
    assert_eq!(read_all(&mut r).len(), 200);
}

#[tokio::test]
async fn an_interval_policy_syncs_once_for_what_arrives_within_it() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        sync: SyncPolicy::Interval(std::time::Duration::from_millis(500)),
        ..WalOptions::default()
    };
    let wal = Wal::open(dir.path(), options).unwrap();
    // Submitted at once, well within the interval: one group, one sync.
    let replies: Vec<_> = (0..20u32)
        .map(|i| wal.submit(payload(i), events(i), 0).unwrap())
        .collect();
    for r in replies {
        r.await.unwrap().unwrap();
    }
    let stats = wal.writer_stats();
    assert_eq!(stats.groups.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(stats.records.load(std::sync::atomic::Ordering::Relaxed), 20);
    // A lone append is answered once its interval is over.
    wal.append(payload(20), 1, 0).await.unwrap();
    assert_eq!(stats.groups.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[tokio::test]
async fn reopen_resumes_positions_and_never_rereads_acked_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), small()).unwrap();
        append_n(&wal, 0, 10).await;
        let mut a = wal.reader("archive").unwrap();
        let mut b = wal.reader("route").unwrap();
        assert!(matches!(wal.reader("route"), Err(WalError::ReaderOpen(_))));
        let got = read_all(&mut a);
        a.ack(got[5].end_seq()).unwrap();
        let got = read_all(&mut b);
        b.ack(got[9].end_seq()).unwrap();
    }
    let wal = Wal::open(dir.path(), small()).unwrap();
    append_n(&wal, 10, 2).await;
    let mut a = wal.reader("archive").unwrap();
    // The open deleted the segments both persisted positions had passed.
    assert_eq!(segments(dir.path())[0], a.acked().segment_base);
    let got: Vec<_> = read_all(&mut a).into_iter().map(|r| r.payload).collect();
    assert_eq!(got, (6..12).map(payload).collect::<Vec<_>>());
    let mut b = wal.reader("route").unwrap();
    let got: Vec<_> = read_all(&mut b).into_iter().map(|r| r.payload).collect();
    assert_eq!(got, vec![payload(10), payload(11)]);
    assert_eq!(a.stats().lost_events + b.stats().lost_events, 0);
}

#[tokio::test]
async fn torn_tail_is_cut_off_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let end = {
        let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        append_n(&wal, 0, 5).await.last().unwrap().end
    };
    let last = *segments(dir.path()).last().unwrap();
    let path = seg_file(dir.path(), last);
    let good_len = std::fs::metadata(&path).unwrap().len();
    // A record whose write stopped halfway.
    let mut torn = Vec::new();
    RecordHeader::encode_record(end, 4, 0, &[7u8; 100], &mut torn);
    torn.truncate(RECORD_HEADER_LEN + 10);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&torn);
    std::fs::write(&path, bytes).unwrap();

    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
    assert_eq!(wal.durable().borrow().next_seq, end);
    let next = wal.append(payload(5), 1, 0).await.unwrap();
    assert_eq!(next.first, end);
    let mut r = wal.reader("route").unwrap();
    assert_eq!(read_all(&mut r).len(), 6);
    assert_eq!(r.stats(), ReaderStats::default());
}

#[tokio::test]
async fn a_damaged_last_record_is_cut_off_and_counted_lost() {
    let dir = tempfile::tempdir().unwrap();
    let end = {
        let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        append_n(&wal, 0, 5).await.last().unwrap().end
    };
    let path = seg_file(dir.path(), 1);
    let recs = records_in(&path);
    // Written whole (so possibly acknowledged), then a payload byte flipped.
    flip(&path, recs[4].0 + RECORD_HEADER_LEN + 1);
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        recs[4].0 as u64,
        "the damaged record is cut off"
    );
    assert_eq!(wal.durable().borrow().next_seq, end, "its seqs stay used");
    wal.append(payload(5), events(5), 0).await.unwrap();
    let mut r = wal.reader("route").unwrap();
    let got = read_all(&mut r);
    assert_eq!(got.len(), 5, "the four before it and the one after");
    assert_eq!(got[4].lost_before, u64::from(events(4)));
    assert_eq!(r.stats().lost_events, u64::from(events(4)));
}

#[tokio::test]
async fn flipped_bytes_skip_only_the_damaged_records_and_count_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        append_n(&wal, 0, 10).await;
    }
    let path = seg_file(dir.path(), 1);
    let recs = records_in(&path);
    assert_eq!(recs.len(), 10);
    flip(&path, recs[3].0 + RECORD_HEADER_LEN + 2); // a payload byte
    flip(&path, recs[6].0 + 17); // a header byte (first_seq)
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let mut r = wal.reader("route").unwrap();
    let got = read_all(&mut r);
    let payloads: Vec<_> = got.iter().map(|r| r.payload.clone()).collect();
    let kept: Vec<_> = (0..10)
        .filter(|i| *i != 3 && *i != 6)
        .map(payload)
        .collect();
    assert_eq!(payloads, kept);
    assert_eq!(got[3].lost_before, u64::from(events(3)));
    assert_eq!(got[5].lost_before, u64::from(events(6)));
    let stats = r.stats();
    assert_eq!(stats.lost_events, u64::from(events(3) + events(6)));
    assert_eq!(stats.damaged, 2);
}

#[tokio::test]
async fn a_truncated_sealed_segment_loses_only_its_torn_record() {
    let dir = tempfile::tempdir().unwrap();
    let total = {
        let wal = Wal::open(dir.path(), small()).unwrap();
        append_n(&wal, 0, 20).await;
        20
    };
    let first = segments(dir.path())[0];
    let path = seg_file(dir.path(), first);
    let recs = records_in(&path);
    let (off, torn) = *recs.last().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(off as u64 + torn.record_len() - 5).unwrap();
    drop(f);

    let wal = Wal::open(dir.path(), small()).unwrap();
    let mut r = wal.reader("route").unwrap();
    let got = read_all(&mut r);
    assert_eq!(got.len(), total - 1);
    let missing = recs.len() - 1;
    assert!(got.iter().all(|rec| rec.payload != payload(missing as u32)));
    assert_eq!(got[missing].lost_before, u64::from(torn.events));
    assert_eq!(r.stats().lost_events, u64::from(torn.events));
    assert_eq!(r.stats().damaged, 1);
}

#[test]
fn a_torn_position_slot_falls_back_to_the_older_slot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.pos");
    let p = |n| Position {
        segment_base: n,
        offset: 32 + n,
        next_seq: 10 * n,
    };
    let (mut file, loaded) = PositionFile::open(&path, p(1)).unwrap();
    assert_eq!(loaded, p(1));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), position::FILE_LEN);
    // Generation 1 went to slot 0 (offset 0), 2 to slot 1 (offset 512), 3 to slot 0 again.
    file.store(&p(2)).unwrap();
    file.store(&p(3)).unwrap();
    drop(file);
    assert_eq!(PositionFile::load(&path).unwrap(), Some(p(3)));
    // A torn write of generation 3.
    flip(&path, 30);
    assert_eq!(PositionFile::load(&path).unwrap(), Some(p(2)));
    // Reopening continues from the valid slot and overwrites the torn one.
    let (mut file, loaded) = PositionFile::open(&path, p(9)).unwrap();
    assert_eq!(loaded, p(2));
    file.store(&p(4)).unwrap();
    assert_eq!(PositionFile::load(&path).unwrap(), Some(p(4)));
}

#[tokio::test]
async fn segments_are_deleted_only_after_every_reader_passed_them() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small()).unwrap();
    append_n(&wal, 0, 20).await;
    let before = segments(dir.path());
    let mut a = wal.reader("archive").unwrap();
    let mut b = wal.reader("route").unwrap();
    assert_eq!(wal.delete_passed().unwrap(), Vec::<u64>::new());

    let got = read_all(&mut a);
    a.ack(got.last().unwrap().end_seq()).unwrap();
    assert_eq!(
        wal.delete_passed().unwrap(),
        Vec::<u64>::new(),
        "route is still at the start"
    );

    let got = read_all(&mut b);
    b.ack(got[9].end_seq()).unwrap();
    let route_at = b.acked().segment_base;
    let deleted = wal.delete_passed().unwrap();
    assert!(!deleted.is_empty());
    assert!(deleted.iter().all(|&s| s < route_at));
    assert_eq!(segments(dir.path())[0], route_at, "route's segment is kept");

    b.ack(got.last().unwrap().end_seq()).unwrap();
    wal.delete_passed().unwrap();
    let active = wal.durable().borrow().segment_base;
    assert_eq!(segments(dir.path()), vec![active]);
    assert!(before.len() > 2);
    // The readers still read what comes next.
    append_n(&wal, 20, 1).await;
    assert_eq!(read_all(&mut a).len(), 1);
    assert_eq!(read_all(&mut b).len(), 1);
}

#[tokio::test]
async fn a_second_open_of_a_locked_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), WalOptions::default()),
        Err(WalError::Locked(_))
    ));
    wal.close();
    Wal::open(dir.path(), WalOptions::default()).unwrap();
}

#[tokio::test]
async fn a_record_over_the_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        max_record_bytes: 16,
        ..WalOptions::default()
    };
    let wal = Wal::open(dir.path(), options).unwrap();
    assert!(matches!(
        wal.append(vec![0; 17], 1, 0).await,
        Err(WalError::TooLarge { .. })
    ));
    wal.append(vec![0; 16], 1, 0).await.unwrap();
}

#[tokio::test]
async fn a_failed_write_is_cut_back_and_fails_only_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let ranges = append_n(&wal, 0, 3).await;
    let stats = wal.writer_stats();
    stats
        .fail_next_write
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(matches!(
        wal.append(payload(3), 5, 0).await,
        Err(WalError::Write(_))
    ));
    let after = wal.append(payload(4), 1, 0).await.unwrap();
    assert_eq!(after.first, ranges[2].end, "the failed group took no seqs");
    assert_eq!(
        stats
            .failed_groups
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The failed segment holds exactly the committed records; the next append went to a new one.
    assert_eq!(records_in(&seg_file(dir.path(), 1)).len(), 3);
    assert_eq!(segments(dir.path()), vec![1, after.first]);
    let mut r = wal.reader("route").unwrap();
    let got: Vec<_> = read_all(&mut r).into_iter().map(|r| r.payload).collect();
    assert_eq!(got, vec![payload(0), payload(1), payload(2), payload(4)]);
    assert_eq!(r.stats(), ReaderStats::default());
}

/// Random flips and truncations in sealed segments: the reader always
/// finishes, every record it returns is intact, and what it returns plus
/// what it counts as lost is every event written.
#[tokio::test]
async fn random_damage_always_terminates_and_accounts_for_every_event() {
    use rand::{Rng, SeedableRng};
    for seed in 0..16u64 {
        let dir = tempfile::tempdir().unwrap();
        let total = {
            let wal = Wal::open(dir.path(), small()).unwrap();
            append_n(&wal, 0, 30).await.last().unwrap().end - 1
        };
        let segs = segments(dir.path());
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..3 {
            let path = seg_file(dir.path(), segs[rng.random_range(0..segs.len() - 1)]);
            let mut bytes = std::fs::read(&path).unwrap();
            if bytes.is_empty() {
                continue;
            }
            let at = rng.random_range(0..bytes.len());
            if rng.random_bool(0.7) {
                bytes[at] ^= 1 << rng.random_range(0..8);
            } else {
                bytes.truncate(at);
            }
            std::fs::write(&path, bytes).unwrap();
        }
        let wal = Wal::open(dir.path(), small()).unwrap();
        let mut r = wal.reader("route").unwrap();
        let got = read_all(&mut r);
        let by_seq: std::collections::HashMap<u64, u32> = {
            let mut seq = 1;
            (0..30)
                .map(|i| {
                    let at = seq;
                    seq += u64::from(events(i));
                    (at, i)
                })
                .collect()
        };
        for w in got.windows(2) {
            assert!(w[0].end_seq() <= w[1].first_seq, "seed {seed}: in order");
        }
        for rec in &got {
            assert_eq!(rec.payload, payload(by_seq[&rec.first_seq]), "seed {seed}");
        }
        let delivered: u64 = got.iter().map(|r| u64::from(r.events)).sum();
        assert_eq!(delivered + r.stats().lost_events, total, "seed {seed}");
    }
}

#[tokio::test]
async fn readers_never_read_past_the_durable_end() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let ranges = append_n(&wal, 0, 2).await;
    // Bytes of a whole valid record the writer has not published as durable.
    let active = wal.durable().borrow().segment_base;
    let mut bytes = std::fs::read(seg_file(dir.path(), active)).unwrap();
    RecordHeader::encode_record(ranges[1].end, 1, 0, b"in flight", &mut bytes);
    std::fs::write(seg_file(dir.path(), active), bytes).unwrap();
    let mut r = wal.reader("route").unwrap();
    assert_eq!(read_all(&mut r).len(), 2);
    assert_eq!(r.stats(), ReaderStats::default());
}

#[tokio::test]
async fn a_missing_segment_is_skipped_and_its_events_counted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), small()).unwrap();
        append_n(&wal, 0, 20).await;
        let mut r = wal.reader("route").unwrap();
        let got = read_all(&mut r);
        r.ack(got[0].end_seq()).unwrap();
    }
    let segs = segments(dir.path());
    // The reader's own segment and the one after it disappear.
    let lost: u64 = [segs[0], segs[1]]
        .iter()
        .map(|&s| {
            records_in(&seg_file(dir.path(), s))
                .iter()
                .map(|(_, h)| u64::from(h.events))
                .sum::<u64>()
        })
        .sum();
    let first_events = u64::from(events(0));
    std::fs::remove_file(seg_file(dir.path(), segs[0])).unwrap();
    std::fs::remove_file(seg_file(dir.path(), segs[1])).unwrap();
    let wal = Wal::open(dir.path(), small()).unwrap();
    let mut r = wal.reader("route").unwrap();
    let got = read_all(&mut r);
    assert_eq!(got[0].first_seq, segs[2]);
    assert_eq!(got[0].lost_before, lost - first_events);
    assert_eq!(r.stats().lost_events, lost - first_events);
    assert_eq!(r.stats().missing_segments, 1);
}

// Both feeds of a tenant (archive and route, on different threads) delete
// passed segments; two deleting the same file at once failed with NotFound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_on_several_threads_delete_passed_segments_without_errors() {
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let wal = Arc::new(Wal::open(dir.path(), small()).unwrap());
        append_n(&wal, 0, 200).await;
        let mut r = wal.reader("route").unwrap();
        let got = read_all(&mut r);
        r.ack(got.last().unwrap().end_seq()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let wal = wal.clone();
                std::thread::spawn(move || wal.delete_passed())
            })
            .collect();
        let mut deleted = Vec::new();
        for t in threads {
            deleted.extend(t.join().unwrap().expect("no deletion error"));
        }
        deleted.sort();
        let before = deleted.len();
        deleted.dedup();
        assert_eq!(before, deleted.len(), "each segment deleted once");
        assert_eq!(segments(dir.path()).len(), 1);
    }
}

#[tokio::test]
async fn readers_close_behind_the_writer_share_its_records_without_a_read() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let (mut archive, mut route) = (wal.reader("archive").unwrap(), wal.reader("route").unwrap());
    append_n(&wal, 0, 5).await;
    let (a, r) = (read_all(&mut archive), read_all(&mut route));
    let want: Vec<Vec<u8>> = (0..5).map(payload).collect();
    assert_eq!(
        a.iter().map(|x| x.payload.to_vec()).collect::<Vec<_>>(),
        want
    );
    assert_eq!(
        r.iter().map(|x| x.payload.to_vec()).collect::<Vec<_>>(),
        want
    );
    assert_eq!((archive.from_memory(), route.from_memory()), (5, 5));
    assert_eq!(
        a[3].payload.as_ptr(),
        r[3].payload.as_ptr(),
        "one copy of a record, shared"
    );
    drop((archive, route, wal));
    // Reopened, nothing is in memory: the same records come from the file, checked.
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let mut archive = wal.reader("archive").unwrap();
    let again = read_all(&mut archive);
    assert_eq!(
        again.iter().map(|x| x.payload.to_vec()).collect::<Vec<_>>(),
        want
    );
    assert_eq!(archive.from_memory(), 0);
}

/// A restart on a full disk: the open cannot start its new segment, yet the
/// log opens, its readers drain what it holds (which is what frees the
/// disk) without counting anything lost, and once a segment can be created
/// again writes go on where the seqs left off.
#[tokio::test]
async fn a_log_opens_on_a_full_disk_and_its_readers_drain_it() {
    let dir = tempfile::tempdir().unwrap();
    let seg_dir = dir.path().join("seg");
    let before = {
        let wal = Wal::open(dir.path(), small()).unwrap();
        wal.reader("route").unwrap();
        append_n(&wal, 0, 20).await
    };
    let segments_before = segments(dir.path());
    writer::FULL_DISK.lock().unwrap().push(seg_dir.clone());
    let wal = Wal::open(dir.path(), small()).unwrap();
    assert!(
        matches!(wal.start_error(), Some(WalError::Io { .. })),
        "{:?}",
        wal.start_error()
    );
    assert_eq!(segments(dir.path()), segments_before, "no new segment");
    assert!(wal.append(payload(99), 1, 0).await.is_err());
    let mut r = wal.reader("route").unwrap();
    let got = read_all(&mut r);
    assert_eq!(got.len(), 20);
    r.ack(got.last().unwrap().end_seq()).unwrap();
    assert_eq!(r.stats(), ReaderStats::default(), "nothing lost or missing");
    wal.delete_passed().unwrap();
    assert_eq!(
        segments(dir.path()),
        vec![*segments_before.last().unwrap()],
        "every passed segment deleted"
    );
    assert_eq!(read_all(&mut r).len(), 0);
    assert_eq!(r.stats(), ReaderStats::default());

    writer::FULL_DISK.lock().unwrap().retain(|d| d != &seg_dir);
    let next = wal.append(payload(20), events(20), 0).await.unwrap();
    assert_eq!(next.first, before.last().unwrap().end, "seqs go on");
    let more = read_all(&mut r);
    assert_eq!(more.len(), 1);
    assert_eq!(more[0].payload, payload(20));
    assert_eq!(more[0].lost_before, 0);
    assert_eq!(r.stats(), ReaderStats::default());
}
