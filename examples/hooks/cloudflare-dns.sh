#!/bin/sh
# /etc/doorman/dns-hook.sh - doorman dns-01 hook for Cloudflare.
# /etc/doorman/cloudflare.env (mode 0600) holds:
#   CF_API_TOKEN=...   (a token with Zone.DNS edit on the zone)
#   CF_ZONE_ID=...
set -eu
. /etc/doorman/cloudflare.env
action=$1 name=${2%.} value=$3          # Cloudflare wants names without the final dot
api=https://api.cloudflare.com/client/v4/zones/$CF_ZONE_ID/dns_records
cf() { curl -sS --fail-with-body --max-time 20 -H "Authorization: Bearer $CF_API_TOKEN" \
            -H "Content-Type: application/json" "$@"; }

case "$action" in
present)
    # Add (never replace): a name and its wildcard publish two values at once.
    cf -X POST "$api" \
       -d "{\"type\":\"TXT\",\"name\":\"$name\",\"content\":\"$value\",\"ttl\":60}" >/dev/null
    ;;
cleanup)
    # Delete only our value; succeed when it is already gone.
    ids=$(cf "$api?type=TXT&name=$name&content=$value" |
          sed -n 's/.*"id":"\([0-9a-f]\{32\}\)".*/\1/p')
    for id in $ids; do
        cf -X DELETE "$api/$id" >/dev/null
    done
    ;;
*)
    exit 0
    ;;
esac
