//! A consumer that is a member of a classic consumer group ([`Membership`]): the group
//! decides its partitions, each starts at the group's committed offset (or, with none
//! committed, where `reset` says: Kafka's `auto.offset.reset`), and positions are committed
//! back under the member's generation — on [`GroupConsumer::commit`], before the member gives
//! its partitions up in a rebalance, and on [`GroupConsumer::close`].
//!
//! Rebalances are eager (the `range` assignor): when the coordinator starts one, the next
//! poll commits, gives up every partition, rejoins and starts on the new assignment.
//!
//! Owner: one glommio executor thread.

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::consumer::{Consumed, Consumer, ConsumerConfig, StartAt};
use crate::membership::{GroupConfig, Membership};
use crate::{Client, Error};

pub struct GroupConsumer {
    consumer: Consumer,
    membership: Membership,
    reset: StartAt,
}

impl GroupConsumer {
    /// A member-to-be of `group` subscribed to `topics`; it joins at its first poll.
    pub fn new(
        client: Rc<Client>,
        config: ConsumerConfig,
        group: GroupConfig,
        topics: &[String],
        reset: StartAt,
    ) -> Self {
        Self {
            consumer: Consumer::new(Rc::clone(&client), config),
            membership: Membership::new(client, group, topics),
            reset,
        }
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The records of one round of fetches, after (re)joining the group if it rebalanced.
    pub async fn poll(&self) -> Result<Vec<Consumed>, Error> {
        self.join().await?;
        self.consumer.poll().await
    }

    /// Joins the group, or rejoins it after a rebalance, without fetching: a member that
    /// waits before it consumes keeps up with the group's rebalances this way.
    pub async fn join(&self) -> Result<(), Error> {
        if self.membership.needs_rejoin() {
            self.rebalance().await?;
        }
        Ok(())
    }

    /// The partitions this member owns now, and the next offset of each.
    pub fn positions(&self) -> Vec<(String, i32, i64)> {
        self.consumer.positions()
    }

    /// True when every owned partition has been read up to its high watermark last seen.
    pub fn caught_up(&self) -> bool {
        !self.membership.needs_rejoin() && self.consumer.caught_up()
    }

    /// Commits the position of every owned partition.
    pub async fn commit(&self) -> Result<(), Error> {
        self.membership.commit(&self.consumer.positions()).await
    }

    /// Commits, then leaves the group (the others take the partitions over at once).
    pub async fn close(&self) -> Result<(), Error> {
        let committed = if self.membership.needs_rejoin() { Ok(()) } else { self.commit().await };
        committed.and(self.leave().await)
    }

    /// Leaves the group without committing (after committing offsets of one's own with
    /// [`Membership::commit`], when not every record polled was handled).
    pub async fn leave(&self) -> Result<(), Error> {
        self.consumer.unassign_all();
        self.membership.leave().await
    }

    async fn rebalance(&self) -> Result<(), Error> {
        if !self.consumer.positions().is_empty() {
            // Best effort: the group may already have moved on (then the commit is refused).
            if let Err(error) = self.commit().await {
                tracing::debug!(group = self.membership.group_id(), %error, "commit before rejoining failed");
            }
        }
        self.consumer.unassign_all();
        let assignment = self.membership.join().await?;
        if let Err(error) = self.start(&assignment).await {
            // Joined, but not reading: join again at the next poll rather than own
            // partitions nobody reads.
            self.consumer.unassign_all();
            self.membership.mark_for_rejoin();
            return Err(error);
        }
        tracing::debug!(
            group = self.membership.group_id(),
            generation = self.membership.generation(),
            ?assignment,
            "joined"
        );
        Ok(())
    }

    /// Starts each assigned partition at its committed offset, or at the reset point.
    async fn start(&self, assignment: &crate::membership::Assignment) -> Result<(), Error> {
        let committed = self.membership.committed(assignment).await?;
        for (topic, partitions) in assignment {
            let mut known = BTreeMap::new();
            let mut unknown = Vec::new();
            for partition in partitions {
                match committed.get(&(topic.clone(), *partition)) {
                    Some(offset) => {
                        known.insert(*partition, *offset);
                    }
                    None => unknown.push(*partition),
                }
            }
            if !known.is_empty() {
                self.consumer.assign_offsets(topic, &known).await?;
            }
            if !unknown.is_empty() {
                self.consumer.assign(topic, &unknown, self.reset).await?;
            }
        }
        Ok(())
    }
}
