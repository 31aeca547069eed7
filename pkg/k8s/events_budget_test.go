package k8s

import (
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
)

// The spam filter: each object may record eventBurst Events at once, then one per
// eventRefill; objects have budgets of their own. The queue stands in for the API
// server: what reaches it is what would be written.
func TestEventsBudget(t *testing.T) {
	clock := clocktesting.NewFakePassiveClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	e := &Events{Clock: clock, component: "herald-test", queue: make(chan *corev1.Event, eventQueue), budgets: map[string]budget{}}
	svc := func(name string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("uid-" + name)}}
	}
	record := func(obj *corev1.Service, n int) int {
		before := len(e.queue)
		for i := range n {
			e.Eventf(obj, corev1.EventTypeNormal, "Test", "event %d", i) // each message different: no aggregation helps
		}
		return len(e.queue) - before
	}
	web, db := svc("web"), svc("db")
	if got := record(web, 40); got != eventBurst {
		t.Fatalf("a burst of 40 Events on one object: %d recorded, want %d", got, eventBurst)
	}
	if got := record(db, 3); got != 3 {
		t.Fatalf("another object's Events: %d recorded, want 3 (its own budget)", got)
	}
	clock.SetTime(clock.Now().Add(eventRefill - time.Second))
	if got := record(web, 1); got != 0 {
		t.Fatalf("before a refill: %d recorded, want 0", got)
	}
	clock.SetTime(clock.Now().Add(time.Second))
	if got := record(web, 5); got != 1 {
		t.Fatalf("after one refill period: %d recorded, want 1", got)
	}
	clock.SetTime(clock.Now().Add(3 * eventRefill))
	if got := record(web, 5); got != 3 {
		t.Fatalf("after three refill periods: %d recorded, want 3", got)
	}
	clock.SetTime(clock.Now().Add(24 * time.Hour))
	if got := record(web, 40); got != eventBurst {
		t.Fatalf("after a day: %d recorded, want a full burst of %d, no more", got, eventBurst)
	}
	// A recreated object (same name, new UID) is another object.
	again := svc("web")
	again.UID = "uid-web-2"
	if got := record(again, 2); got != 2 {
		t.Fatalf("a recreated object: %d recorded, want 2", got)
	}
}

// The budgets are bounded: when full, those refilled entirely are forgotten, and an
// object that spent its budget keeps what it spent.
func TestEventsBudgetBounded(t *testing.T) {
	clock := clocktesting.NewFakePassiveClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	e := &Events{Clock: clock, budgets: map[string]budget{}}
	now := clock.Now()
	for range eventBurst {
		e.allowLocked("spammer", now)
	}
	for i := range eventSeenLimit - 1 {
		e.allowLocked(fmt.Sprintf("object-%d", i), now)
	}
	if len(e.budgets) != eventSeenLimit {
		t.Fatalf("%d budgets, want %d", len(e.budgets), eventSeenLimit)
	}
	// One refill period on, the others are full again, the spammer has one Event.
	now = now.Add(eventRefill)
	if !e.allowLocked("newcomer", now) {
		t.Fatal("a new object was refused")
	}
	if len(e.budgets) != 2 {
		t.Fatalf("%d budgets kept, want the spammer's and the newcomer's", len(e.budgets))
	}
	if !e.allowLocked("spammer", now) || e.allowLocked("spammer", now) {
		t.Error("the spammer's budget was not kept: want one Event, then none")
	}
}

func TestTruncateMessage(t *testing.T) {
	for _, tt := range []struct {
		name, in string
	}{
		{"ascii", strings.Repeat("x", 5000)},
		{"two-byte characters", strings.Repeat("é", 1000)},
		{"three-byte characters", strings.Repeat("€", 500)},
		{"four-byte characters astride the cut", "ab" + strings.Repeat("😀", 400)},
		{"at the limit", strings.Repeat("x", eventMessage)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := truncateMessage(tt.in)
			if len(got) > eventMessage || !utf8.ValidString(got) {
				t.Fatalf("%d bytes, valid UTF-8 %v", len(got), utf8.ValidString(got))
			}
			if len(tt.in) <= eventMessage {
				if got != tt.in {
					t.Fatal("a message within the limit was changed")
				}
				return
			}
			if !strings.HasSuffix(got, "...") || !strings.HasPrefix(tt.in, strings.TrimSuffix(got, "...")) || len(got) < eventMessage-6 {
				t.Fatalf("cut to %d bytes ending %q", len(got), got[len(got)-8:])
			}
		})
	}
}
