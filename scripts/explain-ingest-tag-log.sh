#!/usr/bin/env bash
# The tag-event read of a recordEvents batch (service::rules::facts::tag_log_in_range),
# EXPLAINed read-only on a database with data: 500 customers that have tag events,
# the 50 most used tags standing for the rules' action tags.
#   usage: scripts/explain-ingest-tag-log.sh [postgres-url]   (default: tagbase_bench on localhost)
set -euo pipefail
url="${1:-postgres://postgres@127.0.0.1:5432/tagbase_bench}"
ids=$(psql "$url" -Atc "select '{' || string_agg(customer_id::text, ',') || '}' from (select distinct customer_id from tag_event order by customer_id limit 500 offset (select count(distinct customer_id) / 2 from tag_event)) s")
tags=$(psql "$url" -Atc "select string_agg(tag_id::text, ',') from (select tag_id from tag_event group by tag_id order by count(*) desc limit 50) s")
psql "$url" -c "select count(*) as tag_events, count(distinct customer_id) as customers from tag_event"
psql "$url" -c "EXPLAIN (ANALYZE, BUFFERS, SUMMARY) SELECT seq, customer_id, tag_id, op, source, source_ref, actor_staff_id, occurred_at
  FROM tag_event WHERE customer_id = ANY(CAST(CAST('$ids' AS text) AS bigint[])) AND tag_id IN ($tags) ORDER BY seq DESC" \
  | sed -E 's/\{[0-9,]{200,}\}/{…500 ids…}/g'
