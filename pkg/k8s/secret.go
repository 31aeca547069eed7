package k8s

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// GossipKeyField is the key of the memberlist Secret that holds the gossip key.
const GossipKeyField = "secretkey"

// EnsureGossipKey creates the Secret namespace/name with a random 32-byte gossip key when
// it does not exist. An existing Secret is left as it is.
func EnsureGossipKey(ctx context.Context, client *Core, namespace, name string) (created bool, err error) {
	if err := client.Get(ctx, namespace, name, &corev1.Secret{}); err == nil {
		return false, nil
	} else if !apierrors.IsNotFound(err) {
		return false, fmt.Errorf("read Secret %s/%s: %w", namespace, name, err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return false, err
	}
	err = client.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{"app.kubernetes.io/part-of": "herald"}},
		Data:       map[string][]byte{GossipKeyField: key},
	})
	if apierrors.IsAlreadyExists(err) {
		return false, nil // another replica was first
	}
	if err != nil {
		return false, fmt.Errorf("create Secret %s/%s: %w", namespace, name, err)
	}
	return true, nil
}

// ErrNoGossipKey means the memberlist Secret does not exist yet: the controller creates
// it on first start.
var ErrNoGossipKey = errors.New("does not exist yet (the controller creates it; or pass --memberlist-secret='' to gossip in the clear)")

// GossipKey reads the gossip key from the Secret namespace/name, once.
func GossipKey(ctx context.Context, client *Core, namespace, name string) ([]byte, error) {
	s := &corev1.Secret{}
	err := client.Get(ctx, namespace, name, s)
	switch {
	case apierrors.IsNotFound(err):
		return nil, fmt.Errorf("memberlist key: Secret %s/%s %w", namespace, name, ErrNoGossipKey)
	case err != nil:
		return nil, fmt.Errorf("memberlist key: Secret %s/%s: %w", namespace, name, err)
	}
	key, ok := s.Data[GossipKeyField]
	if !ok {
		return nil, fmt.Errorf("memberlist key: Secret %s/%s has no key %s", namespace, name, GossipKeyField)
	}
	return key, nil
}

// WaitGossipKey reads the gossip key from the Secret, waiting (up to ctx) with w's
// backoff while it cannot: the Secret does not exist yet, or the API server does not
// answer. It fails only when ctx ends.
func WaitGossipKey(ctx context.Context, client *Core, namespace, name string, w Waiter) ([]byte, error) {
	var key []byte
	w.What = cmp.Or(w.What, "the memberlist key")
	err := w.Do(ctx, func(ctx context.Context) error {
		var err error
		key, err = GossipKey(ctx, client, namespace, name)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("memberlist key: Secret %s/%s: %w", namespace, name, err)
	}
	return key, nil
}
