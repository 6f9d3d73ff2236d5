#!/bin/sh
# Writes to stdout a server config with 100 triggers (the act bench's realistic mix: 88
# segment_cpa, 4 abandoned_cart, 4 tag, 4 conversion_feed) and a dry-run seed webhook, for
# `vedetta bench pipeline --config` (docs/benchmarks.md, "Triggers").
#
# Its segment triggers (thresholds 25–112 EUR) never fire on the benches' traffic. An
# argument N gives the first N of them a threshold of 1 EUR, so that they fire for every
# group with spend and two conversions: what a segment firing costs, which the default
# set never measures (docs/triggers.md, "After stage 5", step 26).
set -eu
firing=${1:-0}
# Digits only, at most two, at most 88: `[ -lt ]` on a longer number fails at every trigger
# and the default set came out, exit code 0.
case $firing in ''|*[!0-9]*|???*) firing=bad;; esac
if [ "$firing" = bad ] || [ "$firing" -gt 88 ]; then
  echo "usage: $0 [number of segment triggers made to fire, 0-88]" >&2
  exit 2
fi
{
  for i in $(seq 0 87); do
    case $((i % 3)) in 2) g='["campaign"]';; *) g='["channel", "campaign"]';; esac
    o=$(echo "10 15 30 60" | cut -d' ' -f$((i % 4 + 1)))
    t=$((25 + i))
    if [ "$i" -lt "$firing" ]; then t=1; fi
    printf '[[triggers]]\nname = "cpa_%s"\nkind = "segment_cpa"\ngroup_by = %s\nthreshold = %s\nover = "%sm"\nmin_conversions = 2\nnotify = ["push"]\n\n' "$i" "$g" "$t" "$o"
  done
  for a in 30m 1h 4h 24h; do printf '[[triggers]]\nname = "cart_%s"\nkind = "abandoned_cart"\nafter = "%s"\nnotify = ["push"]\n\n' "$a" "$a"; done
  for v in 50 100 250; do printf '[[triggers]]\nname = "vip_%s"\nkind = "tag"\ntag = "vip-%s"\non = "purchase_over"\nmin_value = %s\nnotify = ["push"]\n\n' "$v" "$v" "$v"; done
  printf '[[triggers]]\nname = "customer"\nkind = "tag"\ntag = "customer"\non = "first_purchase"\nnotify = ["push"]\n\n'
  for i in 0 1 2 3; do printf '[[triggers]]\nname = "feed_%s"\nkind = "conversion_feed"\nnotify = ["push"]\n\n' "$i"; done
  printf '[[alerts.destinations]]\nname = "push"\nkind = "webhook"\nformat = "seed"\ninterval = "30s"\ndry_run = true\nurl = "http://127.0.0.1:9/push"\n'
}
