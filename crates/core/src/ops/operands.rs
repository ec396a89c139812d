//! Operands by name. An op call's buffers travel as two lists (inputs read, outputs written):
//! that generic view is what the Meta backend costs, what the CUDA graphs compare and what the
//! conformance mirror copies. Which position means what is private to the op's own file: each
//! op declares a struct of named operands with [`operands!`], the schedule builds the struct,
//! and a backend gets the struct back from the call, so both sides say `x, gamma, y, stats`
//! and neither counts positions.
//!
//! An optional operand names the descriptor field that decides whether it is there (a bias
//! when `bias` is set, the accumulated dx when `accumulate_dx`), so the lists are checked
//! against the descriptor in one place, both when a call is built and when it is read.

use crate::tensor::Tensor;
use thiserror::Error;

/// What is wrong with a call's buffer lists, as its op's operand struct reads them.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OperandError {
    #[error("expected the {side} '{name}' (position {position}), but the call has only {len}")]
    Missing {
        side: &'static str,
        name: &'static str,
        position: usize,
        len: usize,
    },
    #[error("the call passes {got} {side}s where the op takes {expected}")]
    Extra {
        side: &'static str,
        got: usize,
        expected: usize,
    },
    #[error(
        "'{name}' is both read and written in place, but the call passes two different buffers"
    )]
    NotInPlace { name: &'static str },
    #[error("{0}")]
    Shape(String),
}

/// An op's named operands, convertible to and from the call's buffer lists. `D` is the op's
/// descriptor, which says which optional operands are present.
pub trait Operands<D>: Sized {
    /// The (inputs, outputs) lists of a call. Panics in debug builds when an optional operand's
    /// presence disagrees with the descriptor: that is a schedule bug, not bad input.
    fn into_lists(self, desc: &D) -> (Vec<Tensor>, Vec<Tensor>);

    /// Reads the operands back from a call's lists.
    fn from_lists(desc: &D, inputs: &[Tensor], outputs: &[Tensor]) -> Result<Self, OperandError>;
}

/// A cursor over one of a call's lists, naming what it expected when it runs out.
pub struct Cursor<'a> {
    list: &'a [Tensor],
    next: usize,
    side: &'static str,
}

impl<'a> Cursor<'a> {
    pub fn new(list: &'a [Tensor], side: &'static str) -> Self {
        Cursor {
            list,
            next: 0,
            side,
        }
    }

    /// The next buffer, required.
    pub fn take(&mut self, name: &'static str) -> Result<Tensor, OperandError> {
        let t = self.list.get(self.next).ok_or(OperandError::Missing {
            side: self.side,
            name,
            position: self.next,
            len: self.list.len(),
        })?;
        self.next += 1;
        Ok(t.clone())
    }

    /// The next buffer when `present`, else None (and nothing is consumed).
    pub fn take_if(
        &mut self,
        present: bool,
        name: &'static str,
    ) -> Result<Option<Tensor>, OperandError> {
        present.then(|| self.take(name)).transpose()
    }

    /// The next `count` buffers.
    pub fn take_many(
        &mut self,
        count: usize,
        name: &'static str,
    ) -> Result<Vec<Tensor>, OperandError> {
        (0..count).map(|_| self.take(name)).collect()
    }

    /// Fails when buffers are left over.
    pub fn finish(self) -> Result<(), OperandError> {
        if self.next == self.list.len() {
            Ok(())
        } else {
            Err(OperandError::Extra {
                side: self.side,
                got: self.list.len(),
                expected: self.next,
            })
        }
    }
}

/// Pushes an operand (a buffer, or an optional one) onto a list.
pub trait Slot {
    fn push_to(self, list: &mut Vec<Tensor>);
    fn present(&self) -> bool;
}

impl Slot for Tensor {
    fn push_to(self, list: &mut Vec<Tensor>) {
        list.push(self);
    }
    fn present(&self) -> bool {
        true
    }
}

impl Slot for Option<Tensor> {
    fn push_to(self, list: &mut Vec<Tensor>) {
        list.extend(self);
    }
    fn present(&self) -> bool {
        self.is_some()
    }
}

/// Declares an op's named operands and their list order.
///
/// ```ignore
/// operands! {
///     /// y = norm(x)·γ + β
///     pub struct NormIo for LayerNorm as ln {
///         inputs { x, gamma, beta if ln.bias }
///         inplace { }
///         outputs { y, stats }
///     }
/// }
/// ```
/// A plain name is a required `Tensor`; `name if cond` an `Option<Tensor>` present exactly when
/// `cond` (an expression over the descriptor) holds. `inplace` operands are read and written:
/// they come last among the inputs and first among the outputs, as one buffer.
#[macro_export]
macro_rules! operands {
    (
        $(#[$meta:meta])*
        pub struct $name:ident for $desc:ty as $d:ident {
            inputs { $($(#[$im:meta])* $i:ident $(if $icond:expr)?),* $(,)? }
            inplace { $($(#[$pm:meta])* $p:ident),* $(,)? }
            outputs { $($(#[$om:meta])* $o:ident $(if $ocond:expr)?),* $(,)? }
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug)]
        pub struct $name {
            $($(#[$im])* pub $i: $crate::operands!(@ty $($icond)?),)*
            $($(#[$pm])* pub $p: $crate::tensor::Tensor,)*
            $($(#[$om])* pub $o: $crate::operands!(@ty $($ocond)?),)*
        }

        impl $crate::ops::operands::Operands<$desc> for $name {
            #[allow(unused_variables)]
            fn into_lists(
                self,
                $d: &$desc,
            ) -> (Vec<$crate::tensor::Tensor>, Vec<$crate::tensor::Tensor>) {
                #[allow(unused_imports)]
                use $crate::ops::operands::Slot;
                // At most every operand, so that no push reallocates: every op of every step
                // builds these lists.
                let mut inputs = Vec::with_capacity(
                    0 $(+ $crate::operands!(@one $i))* $(+ $crate::operands!(@one $p))*
                );
                let mut outputs = Vec::with_capacity(
                    0 $(+ $crate::operands!(@one $p))* $(+ $crate::operands!(@one $o))*
                );
                $(
                    debug_assert_eq!(
                        self.$i.present(),
                        $crate::operands!(@cond $($icond)?),
                        concat!(stringify!($name), ".", stringify!($i), ": presence disagrees with the descriptor"),
                    );
                    self.$i.push_to(&mut inputs);
                )*
                $(inputs.push(self.$p.clone());)*
                $(outputs.push(self.$p);)*
                $(
                    debug_assert_eq!(
                        self.$o.present(),
                        $crate::operands!(@cond $($ocond)?),
                        concat!(stringify!($name), ".", stringify!($o), ": presence disagrees with the descriptor"),
                    );
                    self.$o.push_to(&mut outputs);
                )*
                (inputs, outputs)
            }

            #[allow(unused_variables)]
            fn from_lists(
                $d: &$desc,
                inputs: &[$crate::tensor::Tensor],
                outputs: &[$crate::tensor::Tensor],
            ) -> Result<Self, $crate::ops::operands::OperandError> {
                let mut ins = $crate::ops::operands::Cursor::new(inputs, "input");
                let mut outs = $crate::ops::operands::Cursor::new(outputs, "output");
                $(let $i = $crate::operands!(@take ins, $i $(, $icond)?);)*
                $(
                    let $p = ins.take(stringify!($p))?;
                    if outs.take(stringify!($p))?.id != $p.id {
                        return Err($crate::ops::operands::OperandError::NotInPlace {
                            name: stringify!($p),
                        });
                    }
                )*
                $(let $o = $crate::operands!(@take outs, $o $(, $ocond)?);)*
                ins.finish()?;
                outs.finish()?;
                Ok($name { $($i,)* $($p,)* $($o,)* })
            }
        }
    };
    (@one $n:ident) => { 1 };
    (@ty) => { $crate::tensor::Tensor };
    (@ty $cond:expr) => { Option<$crate::tensor::Tensor> };
    (@cond) => { true };
    (@cond $cond:expr) => { $cond };
    (@take $cur:ident, $n:ident) => { $cur.take(stringify!($n))? };
    (@take $cur:ident, $n:ident, $cond:expr) => { $cur.take_if($cond, stringify!($n))? };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::tensor::{MemCategory, TensorId};

    struct Desc {
        bias: bool,
        acc: bool,
    }

    crate::operands! {
        /// A test op: y = x·W (+ b), dx accumulated when `acc`.
        pub struct TestIo for Desc as d {
            inputs { x, w, b if d.bias, dx_in if d.acc }
            inplace { }
            outputs { y }
        }
    }

    crate::operands! {
        pub struct InPlaceIo for Desc as d {
            inputs { x }
            inplace { buf }
            outputs { extra if d.bias }
        }
    }

    fn t(id: u32) -> Tensor {
        Tensor {
            id: TensorId(id),
            shape: vec![2],
            dtype: DType::F32,
            category: MemCategory::Activations,
        }
    }

    #[test]
    fn absent_middle_optional_does_not_shift_the_ones_after_it() {
        let d = Desc {
            bias: false,
            acc: true,
        };
        let io = TestIo {
            x: t(1),
            w: t(2),
            b: None,
            dx_in: Some(t(4)),
            y: t(5),
        };
        let (ins, outs) = io.into_lists(&d);
        assert_eq!(ins.iter().map(|t| t.id.0).collect::<Vec<_>>(), [1, 2, 4]);
        let back = TestIo::from_lists(&d, &ins, &outs).unwrap();
        assert!(back.b.is_none());
        assert_eq!(back.dx_in.unwrap().id, TensorId(4));
        assert_eq!(back.y.id, TensorId(5));
    }

    #[test]
    fn lists_that_disagree_with_the_descriptor_are_errors() {
        let d = Desc {
            bias: true,
            acc: false,
        };
        let err = TestIo::from_lists(&d, &[t(1), t(2)], &[t(5)]).unwrap_err();
        assert_eq!(
            err,
            OperandError::Missing {
                side: "input",
                name: "b",
                position: 2,
                len: 2
            }
        );
        let err = TestIo::from_lists(&d, &[t(1), t(2), t(3), t(4)], &[t(5)]).unwrap_err();
        assert!(matches!(err, OperandError::Extra { got: 4, .. }), "{err}");
    }

    #[test]
    fn in_place_operands_are_one_buffer_in_both_lists() {
        let d = Desc {
            bias: true,
            acc: false,
        };
        let io = InPlaceIo {
            x: t(1),
            buf: t(2),
            extra: Some(t(3)),
        };
        let (ins, outs) = io.into_lists(&d);
        assert_eq!(ins.iter().map(|t| t.id.0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(outs.iter().map(|t| t.id.0).collect::<Vec<_>>(), [2, 3]);
        assert!(InPlaceIo::from_lists(&d, &ins, &outs).is_ok());
        let err = InPlaceIo::from_lists(&d, &ins, &[t(9), t(3)]).unwrap_err();
        assert_eq!(err, OperandError::NotInPlace { name: "buf" });
    }
}
