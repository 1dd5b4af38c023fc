//! Impressions and sheets a document will use, from its page count and the job ticket.

use std::ops::Add;

use crate::job::JobTicket;

/// What printing a job takes, estimated before it prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Sides printed on, all copies included (IPP `job-impressions`).
    pub impressions: u64,
    /// Sheets of media, all copies included (IPP `job-media-sheets`).
    pub sheets: u64,
    /// Priced as color (see [`is_color`]).
    pub color: bool,
    /// Printed on both sides of the sheet.
    pub two_sided: bool,
}

impl Add for Usage {
    type Output = Usage;

    /// The usage of a job of several documents: each document starts on a new sheet.
    fn add(self, other: Usage) -> Usage {
        Usage {
            impressions: self.impressions.saturating_add(other.impressions),
            sheets: self.sheets.saturating_add(other.sheets),
            color: self.color || other.color,
            two_sided: self.two_sided || other.two_sided,
        }
    }
}

/// The usage of one document of `pages` pages printed with `ticket` (the job's template
/// attributes after the queue's defaults were applied):
///
/// - `page-ranges` select pages (clipped to the document; overlaps count once; ranges wholly
///   outside the document select nothing);
/// - `number-up` pages go on one side; a new copy starts on a new side;
/// - `sides` other than `one-sided` prints two sides per sheet, a copy starting on a new
///   sheet;
/// - `copies` multiplies it all (missing or below 1 means 1).
pub fn impressions(pages: u32, ticket: &JobTicket) -> Usage {
    let selected = selected_pages(pages, &ticket.page_ranges);
    let number_up = ticket.number_up.map_or(1, |n| n.max(1) as u64);
    let sides_per_copy = selected.div_ceil(number_up);
    let two_sided = ticket
        .sides
        .as_deref()
        .is_some_and(|sides| sides.starts_with("two-sided"));
    let sheets_per_copy = if two_sided {
        sides_per_copy.div_ceil(2)
    } else {
        sides_per_copy
    };
    let copies = ticket.copies.map_or(1, |c| c.max(1) as u64);
    Usage {
        impressions: sides_per_copy.saturating_mul(copies),
        sheets: sheets_per_copy.saturating_mul(copies),
        color: is_color(ticket.print_color_mode.as_deref()),
        two_sided,
    }
}

/// Whether a job is priced as color. Only the explicitly monochrome modes of PWG 5100.13
/// (`monochrome`, `process-monochrome`, `auto-monochrome`, `bi-level`, `process-bi-level`)
/// are mono. `color`, `auto` (the printer decides page by page) and no mode at all (neither
/// the job nor the queue chose one, so the printer's default applies) are priced as color:
/// the admission estimate errs towards the dearer side, and the printer's own counts settle
/// the ledger. A queue that prints mono should set `defaults.colorMode: monochrome`.
pub fn is_color(print_color_mode: Option<&str>) -> bool {
    !matches!(
        print_color_mode,
        Some(
            "monochrome"
                | "process-monochrome"
                | "auto-monochrome"
                | "bi-level"
                | "process-bi-level"
        )
    )
}

/// How many of a document's pages the ranges select.
fn selected_pages(pages: u32, ranges: &[(i32, i32)]) -> u64 {
    if ranges.is_empty() {
        return u64::from(pages);
    }
    let last = i64::from(pages);
    let mut clipped: Vec<(i64, i64)> = ranges
        .iter()
        .map(|&(from, to)| (i64::from(from).max(1), i64::from(to).min(last)))
        .filter(|(from, to)| from <= to)
        .collect();
    clipped.sort_unstable();
    let mut selected = 0_i64;
    let mut covered_to = 0_i64;
    for (from, to) in clipped {
        let from = from.max(covered_to + 1);
        if from <= to {
            selected += to - from + 1;
            covered_to = to;
        }
    }
    selected as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> JobTicket {
        JobTicket::default()
    }

    #[test]
    fn one_sided_single_copy_is_one_impression_per_page() {
        let usage = impressions(5, &ticket());
        assert_eq!(
            usage,
            Usage {
                impressions: 5,
                sheets: 5,
                color: true,
                two_sided: false
            }
        );
    }

    #[test]
    fn copies_multiply_and_duplex_halves_sheets_per_copy() {
        let duplex = JobTicket {
            copies: Some(3),
            sides: Some("two-sided-long-edge".into()),
            ..ticket()
        };
        // 5 sides per copy on 3 sheets (each copy starts on a new sheet).
        let usage = impressions(5, &duplex);
        assert_eq!((usage.impressions, usage.sheets), (15, 9));
        assert!(usage.two_sided);
        let short_edge = JobTicket {
            sides: Some("two-sided-short-edge".into()),
            ..ticket()
        };
        assert_eq!(impressions(4, &short_edge).sheets, 2);
        let zero_copies = JobTicket {
            copies: Some(0),
            ..ticket()
        };
        assert_eq!(impressions(4, &zero_copies).impressions, 4);
    }

    #[test]
    fn page_ranges_are_clipped_and_merged() {
        let ranges = |ranges: Vec<(i32, i32)>| JobTicket {
            page_ranges: ranges,
            ..ticket()
        };
        assert_eq!(impressions(10, &ranges(vec![(2, 4)])).impressions, 3);
        assert_eq!(
            impressions(10, &ranges(vec![(1, 2), (9, 20)])).impressions,
            4
        );
        assert_eq!(
            impressions(10, &ranges(vec![(3, 6), (5, 8)])).impressions,
            6
        );
        assert_eq!(impressions(10, &ranges(vec![(11, 12)])).impressions, 0);
        assert_eq!(impressions(10, &ranges(vec![(-5, 2)])).impressions, 2);
        assert_eq!(impressions(10, &ranges(vec![(7, 3)])).impressions, 0);
    }

    #[test]
    fn number_up_puts_pages_on_one_side() {
        let four_up = JobTicket {
            number_up: Some(4),
            copies: Some(2),
            sides: Some("two-sided-long-edge".into()),
            page_ranges: vec![(1, 9)],
            ..ticket()
        };
        // 9 pages, 4 per side: 3 sides per copy, 2 sheets per copy.
        let usage = impressions(20, &four_up);
        assert_eq!((usage.impressions, usage.sheets), (6, 4));
    }

    #[test]
    fn color_unless_a_monochrome_mode() {
        for mode in [
            "monochrome",
            "process-monochrome",
            "auto-monochrome",
            "bi-level",
        ] {
            assert!(!is_color(Some(mode)), "{mode}");
        }
        for mode in [Some("color"), Some("auto"), Some("highlight"), None] {
            assert!(is_color(mode), "{mode:?}");
        }
        let mono = JobTicket {
            print_color_mode: Some("monochrome".into()),
            ..ticket()
        };
        assert!(!impressions(1, &mono).color);
    }

    #[test]
    fn documents_add_up() {
        let duplex = JobTicket {
            sides: Some("two-sided-long-edge".into()),
            ..ticket()
        };
        // Two 3-page documents: each starts on a new sheet, so 4 sheets, not 3.
        let job = impressions(3, &duplex) + impressions(3, &duplex);
        assert_eq!((job.impressions, job.sheets), (6, 4));
    }
}
