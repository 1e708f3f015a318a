#!/usr/bin/env bash
# The quickstart of docs/quickstart.md, runnable: two accounts, a conversation, a message, a pull.
# Needs only curl and python3. Usage: docs/quickstart.sh [base URL, default http://127.0.0.1:8080]
set -euo pipefail
BASE=${1:-http://127.0.0.1:8080}
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
say() { printf '\n$ %s\n' "$*"; }

say "curl -s -X POST $BASE/v1/accounts -H 'Content-Type: application/json' -d '{\"handle\":\"alice\"}'"
ALICE=$(curl -sf -X POST "$BASE/v1/accounts" -H 'Content-Type: application/json' -d '{"handle":"alice"}')
echo "$ALICE"
ALICE_TOKEN=$(echo "$ALICE" | json '["token"]')

say "curl -s -X POST $BASE/v1/accounts -H 'Content-Type: application/json' -d '{\"handle\":\"bob\"}'"
BOB=$(curl -sf -X POST "$BASE/v1/accounts" -H 'Content-Type: application/json' -d '{"handle":"bob"}')
echo "$BOB"
BOB_TOKEN=$(echo "$BOB" | json '["token"]')
BOB_ID=$(echo "$BOB" | json '["user_id"]')

say "curl -s -X POST $BASE/v1/conversations -H \"Authorization: Bearer \$ALICE_TOKEN\" -H 'Content-Type: application/json' -d '{\"members\":[$BOB_ID]}'"
CONVERSATION=$(curl -sf -X POST "$BASE/v1/conversations" -H "Authorization: Bearer $ALICE_TOKEN" \
  -H 'Content-Type: application/json' -d "{\"members\":[$BOB_ID]}")
echo "$CONVERSATION"
CONVERSATION_ID=$(echo "$CONVERSATION" | json '["id"]')

say "curl -s -X POST $BASE/v1/conversations/$CONVERSATION_ID/messages -H \"Authorization: Bearer \$ALICE_TOKEN\" -H 'Idempotency-Key: hello-1' -H 'Content-Type: application/json' -d '{\"body\":\"Hello Bob!\"}'"
curl -sf -X POST "$BASE/v1/conversations/$CONVERSATION_ID/messages" -H "Authorization: Bearer $ALICE_TOKEN" \
  -H 'Idempotency-Key: hello-1' -H 'Content-Type: application/json' -d '{"body":"Hello Bob!"}'
echo

say "curl -s \"$BASE/v1/inbox?after=0\" -H \"Authorization: Bearer \$BOB_TOKEN\""
curl -sf "$BASE/v1/inbox?after=0" -H "Authorization: Bearer $BOB_TOKEN"
echo

say "curl -s -X POST $BASE/v1/inbox/ack -H \"Authorization: Bearer \$BOB_TOKEN\" -H 'Content-Type: application/json' -d '{\"seq\":1}' -w '%{http_code}\\n'"
curl -sf -X POST "$BASE/v1/inbox/ack" -H "Authorization: Bearer $BOB_TOKEN" -H 'Content-Type: application/json' \
  -d '{"seq":1}' -w '%{http_code}\n'
