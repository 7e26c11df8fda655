//! How `pager top` draws a [`Frame`]: a summary, the clusters' table, the volumes' table and
//! the fault latency histogram as a sparkline.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Sparkline, Table};
use ratatui::Frame as Screen;

use super::model::{Frame, KINDS};

fn rate(x: f64) -> String {
    if x == 0.0 {
        "-".into()
    } else if x < 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

/// Draws `f` on the whole screen; `error` (the last reading that failed) goes under the
/// summary.
pub fn draw(screen: &mut Screen, f: &Frame, error: Option<&str>) {
    let vol_rows = f.volumes.iter().map(|v| 1 + v.backups.len()).sum::<usize>() as u16;
    let [head, clusters, volumes, latency, help] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(4),
        Constraint::Length(vol_rows + 3),
        Constraint::Length(7),
        Constraint::Length(1),
    ])
    .areas(screen.area());

    let mut lines = vec![Line::from(f.summary.clone()), Line::from(f.rates.clone())];
    if let Some(e) = error {
        lines.push(Line::styled(
            format!("last reading failed: {e}"),
            Style::new().add_modifier(Modifier::REVERSED),
        ));
    }
    screen.render_widget(Paragraph::new(lines), head);

    draw_clusters(screen, f, clusters);
    draw_volumes(screen, f, volumes);

    let counts: Vec<u64> = f.latency.iter().map(|(_, n)| *n).collect();
    let inner = Block::bordered().inner(latency);
    let [spark, labels] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(inner);
    screen.render_widget(
        Block::bordered().title(format!(
            " {} ({} faults; fullest bucket {}) ",
            f.latency_span,
            counts.iter().sum::<u64>(),
            f.latency
                .iter()
                .max_by_key(|(_, n)| *n)
                .filter(|(_, n)| *n > 0)
                .map_or("-", |(l, _)| l.as_str())
        )),
        latency,
    );
    // One bucket per `w` columns, its label under it.
    let w = (inner.width as usize / counts.len().max(1)).max(1);
    let bars: Vec<u64> = counts
        .iter()
        .flat_map(|&n| std::iter::repeat(n).take(w))
        .collect();
    screen.render_widget(Sparkline::default().data(&bars), spark);
    let names: String = f
        .latency
        .iter()
        .map(|(l, _)| format!("{:<w$}", l.trim_start_matches("<="), w = w))
        .collect();
    screen.render_widget(Paragraph::new(names), labels);
    screen.render_widget(
        Paragraph::new("q: quit   (rates per second over the last interval; - is none)"),
        help,
    );
}

fn draw_clusters(screen: &mut Screen, f: &Frame, area: Rect) {
    let mut header = vec!["CLUSTER".to_string()];
    header.extend(KINDS.iter().map(|k| format!("{k}/s")));
    header.extend(["RESIDENT", "DIRTY", "PAGES", "CACHED", "MAPPERS"].map(String::from));
    let rows = f.clusters.iter().map(|c| {
        let mut cells = vec![c.id.clone()];
        cells.extend(c.rates.iter().map(|&r| rate(r)));
        cells.extend([
            c.resident.to_string(),
            c.dirty.to_string(),
            c.pages.to_string(),
            if c.cached { "yes" } else { "-" }.to_string(),
            c.mappers.to_string(),
        ]);
        Row::new(cells)
    });
    let mut widths = vec![Constraint::Length(10)];
    widths.extend([Constraint::Length(9); 6]);
    widths.extend([Constraint::Length(9); 5]);
    screen.render_widget(
        Table::new(rows, widths)
            .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
            .block(
                Block::new()
                    .borders(Borders::TOP)
                    .title(format!(" clusters ({}) ", f.clusters.len())),
            ),
        area,
    );
}

fn draw_volumes(screen: &mut Screen, f: &Frame, area: Rect) {
    let mut rows = Vec::new();
    for v in &f.volumes {
        rows.push(Row::new(vec![
            v.vol.clone(),
            v.name.clone(),
            rate(v.commits_per_sec),
            v.replication.clone(),
        ]));
        for b in &v.backups {
            rows.push(Row::new(vec![
                String::new(),
                String::new(),
                String::new(),
                format!("backup {b}"),
            ]));
        }
    }
    screen.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(6),
                Constraint::Length(20),
                Constraint::Length(10),
                Constraint::Min(20),
            ],
        )
        .header(
            Row::new(["VOLUME", "NAME", "COMMITS/s", "REPLICATION"])
                .style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .block(
            Block::new()
                .borders(Borders::TOP)
                .title(format!(" volumes mounted here ({}) ", f.volumes.len())),
        ),
        area,
    );
}
