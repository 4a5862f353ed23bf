package slots

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestAHostNeverHasMoreSlotsHeldThanItsShare(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := New(2, nil)
		var wg sync.WaitGroup
		var mu sync.Mutex
		held, most := 0, 0
		for range 6 {
			wg.Go(func() {
				_, release, err := h.Acquire(t.Context(), "a:443")
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				held++
				most = max(most, held)
				mu.Unlock()
				time.Sleep(time.Second)
				mu.Lock()
				held--
				mu.Unlock()
				release()
			})
		}
		synctest.Wait()
		if total, busiest := h.InUse(); total != 2 || busiest != 2 {
			t.Errorf("in use %d, busiest %d; want 2 and 2 while six wait", total, busiest)
		}
		wg.Wait()
		if most != 2 {
			t.Errorf("%d slots held at once, want 2", most)
		}
	})
}

func TestTheSlotFreedLastIsTakenFirst(t *testing.T) {
	h := New(3, nil)
	a, releaseA, _ := h.Acquire(t.Context(), "a:443")
	b, releaseB, _ := h.Acquire(t.Context(), "a:443")
	if a == b {
		t.Fatalf("two requests share slot %d", a)
	}
	releaseB()
	releaseB() // a second call gives nothing back twice
	if c, releaseC, _ := h.Acquire(t.Context(), "a:443"); c != b {
		t.Errorf("took slot %d, want %d, the one freed last (its connection warm)", c, b)
	} else {
		releaseC()
	}
	releaseA()
	if total, _ := h.InUse(); total != 0 {
		t.Errorf("%d slots held after every release", total)
	}
}

func TestHostsAreForgottenWhenNoRequestUsesThem(t *testing.T) {
	h := New(1, nil)
	_, release, _ := h.Acquire(t.Context(), "a:443")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, _, err := h.Acquire(ctx, "a:443"); !errors.Is(err, context.Canceled) {
		t.Errorf("a cancelled wait for a full host: %v, want context.Canceled", err)
	}
	if h.Count() != 1 {
		t.Errorf("%d hosts kept, want the one in use", h.Count())
	}
	release()
	if h.Count() != 0 {
		t.Errorf("%d hosts kept once none is used", h.Count())
	}
}

// budget is a shared budget of one connection per host.
type budget struct {
	mu    sync.Mutex
	held  map[string]bool
	fails error
}

func (b *budget) Acquire(_ context.Context, host string) (func(), error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fails != nil {
		return nil, b.fails
	}
	if b.held[host] {
		return nil, errors.New("budget taken")
	}
	b.held[host] = true
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.held[host] = false
	}, nil
}

func TestTheSharedBudgetIsAskedAfterTheLocalSlotAndGivenBackWithIt(t *testing.T) {
	b := &budget{held: map[string]bool{}}
	h := New(2, b)
	_, release, err := h.Acquire(t.Context(), "a:443")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.Acquire(t.Context(), "a:443"); err == nil {
		t.Fatal("a second slot taken past the shared budget")
	}
	if total, _ := h.InUse(); total != 1 {
		t.Errorf("%d local slots held after the shared budget refused one, want 1", total)
	}
	release()
	if b.held["a:443"] {
		t.Error("the shared budget was not given back")
	}
	b.fails = errors.New("redis away")
	if _, _, err := h.Acquire(t.Context(), "a:443"); err == nil {
		t.Error("no error when the shared budget fails")
	}
	if total, _ := h.InUse(); total != 0 || h.Count() != 0 {
		t.Errorf("a failed shared budget left %d slots held on %d hosts", total, h.Count())
	}
}
